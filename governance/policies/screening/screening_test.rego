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

nudity_only := {"detector": "nsfwjs", "scores": {"sexual": 0.1}, "covered": ["sexual"]}

test_uncovered_categories_hold_by_default if {
	rule_ids(nudity_only) == {"screening.uncovered"}
	count(screening.evaluate(nudity_only).deny) == 5
}

test_uncovered_categories_released_when_data_allows if {
	screening.evaluate_with(nudity_only, object.union(screening.cfg, {"release_uncovered": true})).allow == true
	screening.evaluate_with(nudity_only, object.union(screening.cfg, {"release_without_detector": true})).allow == true
}

test_covered_category_still_flagged_when_uncovered_ones_are_released if {
	settings := object.union(screening.cfg, {"release_uncovered": true})
	flagged := object.union(nudity_only, {"scores": {"sexual": 0.7}})
	{v.rule_id | some v in screening.evaluate_with(flagged, settings).deny} == {"screening.sexual"}
}

test_covered_category_without_score_is_a_detector_fault if {
	settings := object.union(screening.cfg, {"release_uncovered": true})
	faulty := {"detector": "nsfwjs", "scores": {}, "covered": ["sexual"]}
	{v.rule_id | some v in screening.evaluate_with(faulty, settings).deny} == {"screening.missing_score"}
}

test_uncovered_release_fails_closed_without_the_data_key if {
	settings := object.remove(screening.cfg, ["release_uncovered"])
	rule_ids_with(nudity_only, settings) == {"screening.uncovered"}
}

rule_ids_with(inp, settings) := {v.rule_id | some v in screening.evaluate_with(inp, settings).deny}
