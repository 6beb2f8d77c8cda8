package latentops.screening_test

import data.latentops.screening
import rego.v1

clean := {"sexual": 0.01, "minors": 0.01, "violence": 0.01, "self_harm": 0.01, "hate": 0.01, "weapons": 0.01}

rule_ids(inp) := {v.rule_id | some v in screening.evaluate(inp).deny}

test_clean_scores_released if {
	screening.evaluate({"detector": "clip", "scores": clean}).allow == true
}

test_score_at_threshold_flagged_per_category if {
	rule_ids({"detector": "clip", "scores": object.union(clean, {"violence": 0.6})}) == {"screening.violence"}
	rule_ids({"detector": "clip", "scores": object.union(clean, {"sexual": 0.9, "minors": 0.8})}) == {"screening.sexual", "screening.minors"}
}

test_missing_score_denied if {
	rule_ids({"detector": "clip", "scores": {"sexual": 0.1}}) == {"screening.missing_score"}
}

test_no_detector_not_released_by_default if {
	rule_ids({"detector": "none", "scores": {}}) == {"screening.no_detector"}
}

test_no_detector_released_when_data_allows if {
	settings := object.union(screening.cfg, {"release_without_detector": true})
	screening.evaluate_with({"detector": "none", "scores": {}}, settings).allow == true
}
