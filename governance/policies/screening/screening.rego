# Image release: an image is released only when a real detector scored it and every category
# scored below its threshold. Thresholds per category are data, tuned by compliance officers.
#
# Input: {"detector": str ("none" when no real detector is configured), "scores": {category: number}}
package latentops.screening

import data.latentops.lib
import rego.v1

cfg := data.policy_data.screening

decision := evaluate(input)

evaluate(inp) := evaluate_with(inp, cfg)

# The same decision under other settings: lets tests and previews try data edits before saving.
evaluate_with(inp, settings) := lib.decision(no_detector(inp, settings) | (missing(inp) | flagged(inp)))

no_detector(inp, settings) := {lib.violation(
	"screening.no_detector",
	"no content detector is configured and policy does not release unscreened images",
) |
	inp.detector == "none"
	settings.release_without_detector != true
}

missing(inp) := {lib.violation(
	"screening.missing_score",
	concat("", ["the detector gave no score for ", category]),
) |
	inp.detector != "none"
	some category in object.keys(cfg.thresholds)
	not has_score(inp, category)
}

has_score(inp, category) if is_number(inp.scores[category])

flagged(inp) := {lib.violation(
	concat("", ["screening.", category]),
	sprintf("%s score %v is at or above the threshold %v", [category, inp.scores[category], limit]),
) |
	inp.detector != "none"
	some category in object.keys(cfg.thresholds)
	limit := cfg.thresholds[category]
	inp.scores[category] >= limit
}
