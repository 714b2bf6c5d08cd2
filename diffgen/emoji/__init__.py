"""The default model's data and its measures: emoji concepts, the scene composer that builds the
captioned training folder, sprite matching, the shape judge and the speedrun scorecard."""
