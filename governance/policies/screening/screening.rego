# Image release: an image is released only when a real detector scored it and every category
# scored below its threshold. Thresholds per category are data, tuned by compliance officers.
#
# Input: {"detector": str ("none" when no real detector is configured), "scores": {category: number},
#         "covered": [category, ...] (the categories the configured detectors cover; optional)}
#
# A category no configured detector covers is "uncovered": the image was not screened for it. Policy
# data decides whether that holds the image: `release_uncovered` (false by default) releases images
# with uncovered categories while at least one detector is configured, and `release_without_detector`
# (which also releases images no detector screened at all) implies it. A covered category without a
# score is a detector fault and always holds the image (`screening.missing_score`); so does every
# category when the input lists no coverage.
package latentops.screening

import data.latentops.lib
import rego.v1

cfg := data.policy_data.screening

decision := evaluate(input)

evaluate(inp) := evaluate_with(inp, cfg)

# The same decision under other settings: lets tests and previews try data edits before saving.
evaluate_with(inp, settings) := lib.decision(no_detector(inp, settings) | ((missing(inp, settings) | uncovered(inp, settings)) | flagged(inp, settings)))

no_detector(inp, settings) := {lib.violation(
	"screening.no_detector",
	"no content detector is configured and policy does not release unscreened images",
) |
	inp.detector == "none"
	settings.release_without_detector != true
}

missing(inp, settings) := {lib.violation(
	"screening.missing_score",
	concat("", ["the detector gave no score for ", category]),
) |
	inp.detector != "none"
	some category in object.keys(settings.thresholds)
	covered(inp, category)
	not has_score(inp, category)
}

uncovered(inp, settings) := {lib.violation(
	"screening.uncovered",
	concat("", ["no configured detector covers ", category, " and policy does not release images unscreened for it"]),
) |
	inp.detector != "none"
	not releases_uncovered(settings)
	some category in object.keys(settings.thresholds)
	not covered(inp, category)
	not has_score(inp, category)
}

# Without a coverage list every category counts as covered (a missing score holds the image).
covered(inp, category) if not is_array(inp.covered)

covered(inp, category) if {
	some name in inp.covered
	name == category
}

releases_uncovered(settings) if settings.release_uncovered == true

releases_uncovered(settings) if settings.release_without_detector == true

has_score(inp, category) if is_number(inp.scores[category])

flagged(inp, settings) := {lib.violation(
	concat("", ["screening.", category]),
	sprintf("%s score %v is at or above the threshold %v", [category, inp.scores[category], limit]),
) |
	inp.detector != "none"
	some category in object.keys(settings.thresholds)
	limit := settings.thresholds[category]
	inp.scores[category] >= limit
}
