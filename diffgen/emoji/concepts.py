"""Curated emoji concepts for the default model's training scenes.

Each line: CLDR short name (as in the `emoji` package, without colons) | caption name | plural |
kind. Flags, keycaps, text-like symbols, people (skin-tone variants), clock faces, arrows and signs
are left out: they make poor scene objects. A plural equal to the name marks a mass noun or a
plural-only name (no article: "grapes", "broccoli").
"""

CONCEPT_TABLE = """
panda|panda|pandas|animal
cat_face|cat|cats|animal
dog_face|dog|dogs|animal
mouse_face|mouse|mice|animal
rabbit_face|rabbit|rabbits|animal
fox|fox|foxes|animal
bear|bear|bears|animal
tiger_face|tiger|tigers|animal
lion|lion|lions|animal
cow_face|cow|cows|animal
pig_face|pig|pigs|animal
frog|frog|frogs|animal
monkey_face|monkey|monkeys|animal
chicken|chicken|chickens|animal
penguin|penguin|penguins|animal
bird|bird|birds|animal
owl|owl|owls|animal
unicorn|unicorn|unicorns|animal
horse_face|horse|horses|animal
turtle|turtle|turtles|animal
snake|snake|snakes|animal
octopus|octopus|octopuses|animal
fish|fish|fish|animal
tropical_fish|tropical fish|tropical fish|animal
whale|whale|whales|animal
dolphin|dolphin|dolphins|animal
crab|crab|crabs|animal
snail|snail|snails|animal
butterfly|butterfly|butterflies|animal
lady_beetle|ladybug|ladybugs|animal
honeybee|bee|bees|animal
elephant|elephant|elephants|animal
koala|koala|koalas|animal
hedgehog|hedgehog|hedgehogs|animal
red_apple|apple|apples|food
green_apple|green apple|green apples|food
banana|banana|bananas|food
grapes|grapes|grapes|food
strawberry|strawberry|strawberries|food
cherries|cherries|cherries|food
watermelon|watermelon|watermelons|food
lemon|lemon|lemons|food
pineapple|pineapple|pineapples|food
peach|peach|peaches|food
pear|pear|pears|food
carrot|carrot|carrots|food
ear_of_corn|corn|corn|food
broccoli|broccoli|broccoli|food
mushroom|mushroom|mushrooms|food
pizza|pizza|pizzas|food
hamburger|burger|burgers|food
hot_dog|hot dog|hot dogs|food
doughnut|donut|donuts|food
cookie|cookie|cookies|food
birthday_cake|cake|cakes|food
soft_ice_cream|ice cream|ice creams|food
croissant|croissant|croissants|food
cheese_wedge|cheese|cheeses|food
egg|egg|eggs|food
hot_beverage|coffee|coffees|food
sunflower|sunflower|sunflowers|plant
tulip|tulip|tulips|plant
rose|rose|roses|plant
cactus|cactus|cacti|plant
deciduous_tree|tree|trees|plant
evergreen_tree|pine tree|pine trees|plant
palm_tree|palm tree|palm trees|plant
four_leaf_clover|clover|clovers|plant
maple_leaf|maple leaf|maple leaves|plant
bicycle|bicycle|bicycles|vehicle
automobile|car|cars|vehicle
bus|bus|buses|vehicle
locomotive|train|trains|vehicle
airplane|airplane|airplanes|vehicle
rocket|rocket|rockets|vehicle
sailboat|sailboat|sailboats|vehicle
motor_scooter|scooter|scooters|vehicle
fire_engine|fire truck|fire trucks|vehicle
tractor|tractor|tractors|vehicle
helicopter|helicopter|helicopters|vehicle
skateboard|skateboard|skateboards|vehicle
sun|sun|suns|weather
cloud|cloud|clouds|weather
rainbow|rainbow|rainbows|weather
snowflake|snowflake|snowflakes|weather
high_voltage|lightning bolt|lightning bolts|weather
crescent_moon|moon|moons|weather
star|star|stars|weather
umbrella|umbrella|umbrellas|weather
snowman_without_snow|snowman|snowmen|weather
fire|fire|fires|weather
droplet|water drop|water drops|weather
house|house|houses|building
house_with_garden|house with a garden|houses with gardens|building
castle|castle|castles|building
classical_building|temple|temples|building
hospital|hospital|hospitals|building
school|school|schools|building
tent|tent|tents|building
mountain|mountain|mountains|building
volcano|volcano|volcanoes|building
soccer_ball|soccer ball|soccer balls|object
basketball|basketball|basketballs|object
balloon|balloon|balloons|object
wrapped_gift|gift|gifts|object
guitar|guitar|guitars|object
crown|crown|crowns|object
gem_stone|gem|gems|object
light_bulb|light bulb|light bulbs|object
books|books|books|object
pencil|pencil|pencils|object
scissors|scissors|scissors|object
key|key|keys|object
hammer|hammer|hammers|object
bell|bell|bells|object
red_heart|heart|hearts|object
alarm_clock|alarm clock|alarm clocks|object
camera|camera|cameras|object
laptop|laptop|laptops|object
mobile_phone|phone|phones|object
glasses|glasses|glasses|object
top_hat|top hat|top hats|object
t-shirt|t-shirt|t-shirts|object
teddy_bear|teddy bear|teddy bears|object
robot|robot|robots|object
ghost|ghost|ghosts|object
alien|alien|aliens|object
jack-o-lantern|pumpkin|pumpkins|object
christmas_tree|christmas tree|christmas trees|plant
anchor|anchor|anchors|object
trophy|trophy|trophies|object
"""

# Other words a caption may use for the same concept ("a panda riding a bike").
SYNONYMS = {
    "bicycle": ("bike",), "airplane": ("plane",), "car": ("automobile",), "donut": ("doughnut",),
    "burger": ("hamburger",), "rabbit": ("bunny",), "soccer ball": ("football",), "phone": ("smartphone",),
    "train": ("locomotive",), "ladybug": ("ladybird",), "tree": ("oak tree",),
}
