// Fine-tune form: a preview and a caption field for each selected image (no build step, no framework).
(function () {
  "use strict";
  const input = document.getElementById("ft-images");
  const previews = document.getElementById("ft-previews");
  if (!input || !previews) return;
  input.addEventListener("change", function () {
    previews.replaceChildren();
    Array.from(input.files).forEach(function (file, index) {
      const figure = document.createElement("figure");
      const image = document.createElement("img");
      image.src = URL.createObjectURL(file);
      image.alt = "Preview of " + file.name;
      const label = document.createElement("label");
      label.htmlFor = "ft-caption-" + index;
      label.textContent = "Caption for " + file.name;
      const caption = document.createElement("input");
      caption.id = "ft-caption-" + index;
      caption.name = "captions";
      caption.maxLength = 1000;
      figure.append(image, label, caption);
      previews.append(figure);
    });
  });
})();
