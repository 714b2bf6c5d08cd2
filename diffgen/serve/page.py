"""The page at ``/``: a form, live progress, and a gallery with each image's recipe and a download.

Plain HTML and a little JavaScript, no build step and nothing fetched from elsewhere; it speaks
the same AUTOMATIC1111 API as every other client (txt2img, progress, interrupt, sd-models,
samplers). Text from the server is always set as text, never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffgen</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  form { display: grid; grid-template-columns: max-content 1fr; gap: 0.4rem 0.8rem; align-items: center; }
  textarea { width: 100%; font: inherit; }
  input[type=number] { width: 7rem; }
  .buttons { grid-column: 2; display: flex; gap: 0.5rem; }
  progress { width: 100%; height: 1rem; }
  #status { min-height: 1.4rem; margin: 0.6rem 0; }
  #error { color: #b00020; }
  #gallery { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: 1rem; }
  figure { margin: 0; width: 16rem; border: 1px solid #ddd; padding: 0.5rem; border-radius: 4px; }
  figure img { width: 16rem; height: 16rem; image-rendering: pixelated; display: block; }
  figcaption pre { white-space: pre-wrap; word-break: break-word; font-size: 0.75rem; margin: 0.4rem 0; }
</style>
</head>
<body>
<h1>diffgen</h1>
<p>Text to image with one loaded model. The same server answers AUTOMATIC1111's API
(<code>/sdapi/v1</code>) and OpenAI's images API (<code>/v1/images/generations</code>).</p>
<form id="form">
  <label for="prompt">Prompt</label><textarea id="prompt" rows="2" required></textarea>
  <label for="negative">Negative prompt</label><textarea id="negative" rows="1"></textarea>
  <label for="model">Model</label><select id="model"></select>
  <label for="sampler">Sampler</label><select id="sampler"></select>
  <label for="seed">Seed</label><input id="seed" type="number" value="-1" min="-1" title="-1: random">
  <label for="steps">Steps</label><input id="steps" type="number" value="20" min="1">
  <label for="guidance">Guidance</label><input id="guidance" type="number" value="3" min="0" step="0.5">
  <label for="count">Images</label><input id="count" type="number" value="4" min="1">
  <div class="buttons"><button id="generate" type="submit">Generate</button>
    <button id="stop" type="button" disabled>Stop</button></div>
</form>
<div id="status"><progress id="progress" max="1" value="0" hidden></progress>
  <span id="progress-text"></span> <span id="error" role="alert"></span></div>
<div id="gallery"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const response = await fetch(path, {method, headers: {"Content-Type": "application/json"},
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || data.error || ("HTTP " + response.status));
  return data;
}

function option(select, value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  select.appendChild(element);
}

async function fillChoices() {
  const [models, samplers, options] = await Promise.all(
    [api("GET", "/sdapi/v1/sd-models"), api("GET", "/sdapi/v1/samplers"), api("GET", "/sdapi/v1/options")]);
  for (const model of models) option($("model"), model.model_name, model.title);
  $("model").value = models.find((m) => m.title === options.sd_model_checkpoint)?.model_name || "";
  for (const sampler of samplers) option($("sampler"), sampler.aliases[0], sampler.name);
  $("sampler").value = "dpmpp-2m";
}

async function watchProgress(running) {
  while (running.active) {
    try {
      const state = await api("GET", "/sdapi/v1/progress");
      if (running.active && state.state.sampling_steps > 0) {
        $("progress").value = state.progress;
        $("progress-text").textContent = Math.round(100 * state.progress) + "% of the sampler's steps" +
          (state.eta_relative > 0 ? ", about " + state.eta_relative.toFixed(1) + " s left" : "");
      } else if (running.active && state.state.job_count > 1) {
        $("progress-text").textContent = "waiting for " + (state.state.job_count - 1) + " other request(s)";
      }
    } catch (error) { /* the answer to the request itself reports errors */ }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function show(images, info) {
  images.forEach((image, i) => {
    const figure = document.createElement("figure");
    const picture = document.createElement("img");
    picture.src = "data:image/png;base64," + image;
    picture.alt = info.all_prompts[i];
    const caption = document.createElement("figcaption");
    const recipe = document.createElement("pre");
    recipe.className = "recipe";
    recipe.textContent = info.infotexts[i];
    const link = document.createElement("a");
    link.href = picture.src;
    link.download = info.filenames[i];
    link.textContent = "download " + info.filenames[i];
    caption.append(recipe, link);
    figure.append(picture, caption);
    $("gallery").prepend(figure);
  });
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("progress").hidden = false;
  $("progress").value = 0;
  $("progress-text").textContent = "starting";
  const running = {active: true};
  watchProgress(running);
  try {
    const count = Number($("count").value);
    let batch = Math.min(count, 8);  // images computed together: the largest that divides the count
    while (batch > 1 && count % batch !== 0) batch -= 1;
    const result = await api("POST", "/sdapi/v1/txt2img", {
      prompt: $("prompt").value, negative_prompt: $("negative").value, seed: Number($("seed").value),
      steps: Number($("steps").value), cfg_scale: Number($("guidance").value), sampler_name: $("sampler").value,
      batch_size: batch, n_iter: Math.max(1, Math.round(count / batch)),
      override_settings: $("model").value ? {sd_model_checkpoint: $("model").value} : {}});
    const info = JSON.parse(result.info);
    show(result.images, info);
    $("progress").value = 1;
    $("progress-text").textContent = info.interrupted
      ? "stopped: " + result.images.length + " image(s) finished" : "done: " + result.images.length + " image(s)";
  } catch (error) {
    $("error").textContent = error.message;
    $("progress-text").textContent = "";
  } finally {
    running.active = false;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
});
$("stop").addEventListener("click", () => api("POST", "/sdapi/v1/interrupt").catch(() => {}));
fillChoices().catch((error) => { $("error").textContent = error.message; });
</script>
</body>
</html>
"""
