// Generate form: choosing a LoRA adapter selects the base model it was trained on (no build step).
(function () {
  "use strict";
  const adapter = document.getElementById("lora");
  const model = document.getElementById("model");
  if (!adapter || !model) return;
  adapter.addEventListener("change", function () {
    const base = adapter.selectedOptions[0] && adapter.selectedOptions[0].dataset.model;
    if (base && Array.from(model.options).some(function (o) { return o.value === base; })) model.value = base;
  });
})();
