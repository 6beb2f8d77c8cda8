package latentops.prompt_test

import data.latentops.prompt
import rego.v1

no_personal_data := {"findings": []}

# Semantic scores as the host reports them (latentops.governance.semantic.analyse).
no_scores := {"available": true, "model": "test", "scores": {}}

scores(values) := {"available": true, "model": "test", "scores": {category: {"score": s, "exemplar": concat("", ["an example of ", category]), "similarity": 0.8} |
	some category, s in values
}}

# A prompt section as the host builds it (see latentops.governance.normalize.analyse_prompt).
section(overrides) := object.union(
	{"raw": "a cat", "length": 5, "analysed": true, "normalized": "a cat", "terms": {}, "protected_names": [], "personal_data": no_personal_data, "semantic": no_scores},
	overrides,
)

rule_ids(inp) := {v.rule_id | some v in prompt.evaluate({"prompt": section(inp)}).deny}

report(inp) := prompt.evaluate({"prompt": section(inp)}).categories

allowed(inp) if prompt.evaluate({"prompt": section(inp)}).allow == true

test_plain_prompt_allowed if {
	allowed({})
}

blocked_category_cases := [
	{"terms": {"gore": ["gore"]}, "rule": "prompt.gore"},
	{"terms": {"self_harm": ["self harm"]}, "rule": "prompt.self_harm"},
	{"terms": {"hate": ["heil hitler"]}, "rule": "prompt.hate"},
	{"terms": {"sexual": ["nude"]}, "rule": "prompt.sexual"},
]

test_blocked_categories_denied_with_their_rule_id if {
	every c in blocked_category_cases {
		rule_ids({"terms": c.terms}) == {c.rule}
	}
}

test_sexual_terms_with_minors_denied_as_sexual_minors if {
	"prompt.sexual_minors" in rule_ids({"terms": {"sexual": ["nude"], "minors": ["child"]}})
}

test_minors_alone_allowed if {
	allowed({"terms": {"minors": ["child"]}})
}

test_protected_name_denied_with_name_in_reason if {
	d := prompt.evaluate({"prompt": section({"protected_names": [{"name": "Mickey Mouse", "category": "trademarked character", "matched": "mickey mouse"}]})})
	d.allow == false
	d.deny == {{"rule_id": "prompt.protected_name", "reason": "the prompt names Mickey Mouse, a protected trademarked character"}}
}

finding(kind, format) := {"kind": kind, "format": format, "masked": "********42"}

with_findings(findings) := {"personal_data": {"findings": findings}}

personal_data_cases := [
	{"finding": finding("email", "email"), "rule": "prompt.personal_data.email", "reason": "the prompt contains an email address; remove it"},
	{"finding": finding("phone", "GB"), "rule": "prompt.personal_data.phone", "reason": "the prompt contains a phone number (GB); remove it"},
	{"finding": finding("payment_card", "visa"), "rule": "prompt.personal_data.payment_card", "reason": "the prompt contains a payment card number (visa); remove it"},
	{"finding": finding("iban", "iban"), "rule": "prompt.personal_data.iban", "reason": "the prompt contains a bank account number (IBAN); remove it"},
	{"finding": finding("national_id", "us.ssn"), "rule": "prompt.personal_data.national_id", "reason": "the prompt contains a national identity number (us.ssn); remove it"},
	{"finding": finding("vat", "eu.vat"), "rule": "prompt.personal_data.vat", "reason": "the prompt contains a VAT number (eu.vat); remove it"},
]

test_personal_data_denied_per_kind_with_kind_and_format_in_reason if {
	every c in personal_data_cases {
		d := prompt.evaluate({"prompt": section(with_findings([c.finding]))})
		d.allow == false
		d.deny == {{"rule_id": c.rule, "reason": c.reason}}
	}
}

test_personal_data_one_violation_per_kind_naming_every_format if {
	d := prompt.evaluate({"prompt": section(with_findings([
		finding("national_id", "us.ssn"), finding("national_id", "fr.nir"), finding("national_id", "us.ssn"),
		finding("phone", "US"),
	]))})
	d.deny == {
		{"rule_id": "prompt.personal_data.national_id", "reason": "the prompt contains a national identity number (fr.nir, us.ssn); remove it"},
		{"rule_id": "prompt.personal_data.phone", "reason": "the prompt contains a phone number (US); remove it"},
	}
}

test_personal_data_reason_never_carries_the_value if {
	d := prompt.evaluate({"prompt": section(with_findings([finding("payment_card", "visa")]))})
	every v in d.deny {
		not contains(v.reason, "42")
	}
}

test_no_findings_allowed if {
	allowed(with_findings([]))
}

test_kind_without_a_label_denied_under_its_own_rule_id if {
	d := prompt.evaluate({"prompt": section(with_findings([finding("passport", "de.passport")]))})
	d.deny == {{"rule_id": "prompt.personal_data.passport", "reason": "the prompt contains personal data (passport) (de.passport); remove it"}}
}

test_allowed_kinds_pass if {
	inp := {"prompt": section(with_findings([finding("vat", "eu.vat"), finding("phone", "FR")]))}
	{v.rule_id | some v in prompt.personal_data(inp, ["vat"])} == {"prompt.personal_data.phone"}
	count(prompt.personal_data(inp, ["vat", "phone"])) == 0
}

test_prompt_over_limit_denied_as_too_long if {
	rule_ids({"length": 2001, "analysed": true}) == {"prompt.too_long"}
	allowed({"length": 2000})
}

test_oversize_prompt_not_analysed_denied_by_length_only if {
	rule_ids({"length": 50000, "analysed": false}) == {"prompt.too_long"}
}

test_unanalysed_prompt_denied_as_invalid_input if {
	rule_ids({"analysed": false}) == {"prompt.invalid_input"}
}

test_every_violation_reported_together if {
	ids := rule_ids({"length": 2001, "terms": {"gore": ["gore"]}, "protected_names": [{"name": "Pikachu", "category": "trademarked character"}]})
	ids == {"prompt.too_long", "prompt.gore", "prompt.protected_name"}
}

# --- severity: keyword and semantic levels, per-team blocking, failing closed -------------------

cut(category, level) := data.policy_data.prompt.semantic.cuts[category][level]

test_semantic_score_reaches_levels_and_blocks_at_policy_level if {
	high := cut("gore", "6") + 0.001
	mid := cut("gore", "4") + 0.001
	report({"semantic": scores({"gore": high})}).gore.severity == 6
	report({"semantic": scores({"gore": mid})}).gore.severity == 4
	report({"semantic": scores({"gore": 0.0})}).gore.severity == 0
	rule_ids({"semantic": scores({"gore": high})}) == {"prompt.gore"}
	rule_ids({"semantic": scores({"gore": mid})}) == set()
}

test_semantic_reason_names_the_nearest_exemplar_and_score if {
	decision := prompt.evaluate({"prompt": section({"semantic": scores({"hate": 0.99})})})
		with data.policy_data.prompt.semantic.cuts.hate as {"2": 0.5, "4": 0.75, "6": 0.9}
	some v in decision.deny
	v.rule_id == "prompt.hate"
	contains(v.reason, "severity 6 of 6")
	contains(v.reason, "closest to \"an example of hate\", score 0.99")
}

test_team_level_overrides_the_default if {
	mid := cut("self_harm", "4") + 0.001
	inp := {"prompt": section({"semantic": scores({"self_harm": mid})}), "team": "crisis-line"}
	strict := prompt.evaluate(inp) with data.policy_data.prompt.team_block_at as {"crisis-line": {"self_harm": 4}}
	strict.categories.self_harm.blocks_at == 4
	"prompt.self_harm" in {v.rule_id | some v in strict.deny}
	other := prompt.evaluate(object.union(inp, {"team": "other"})) with data.policy_data.prompt.team_block_at as {"crisis-line": {"self_harm": 4}}
	other.allow == true
}

test_ambiguous_term_alone_does_not_block_the_meaning_decides if {
	rule_ids({"terms": {"sexual:ambiguous": ["nude"]}}) == set()
	report({"terms": {"sexual:ambiguous": ["nude"]}}).sexual.severity == 2
	report({"terms": {"sexual:ambiguous": ["nude"]}}).sexual.evidence == "matched: nude"
	high := cut("sexual", "6") + 0.001
	rule_ids({"terms": {"sexual:ambiguous": ["nude"]}, "semantic": scores({"sexual": high})}) == {"prompt.sexual"}
}

test_ambiguous_term_confirmed_by_the_meaning_counts_as_listed if {
	level := data.policy_data.prompt.semantic.ambiguous_confirmed_at
	confirmed := cut("sexual", format_int(level, 10)) + 0.001
	below := cut("sexual", format_int(level, 10)) - 0.001
	rule_ids({"terms": {"sexual:ambiguous": ["nude"]}, "semantic": scores({"sexual": confirmed})}) == {"prompt.sexual"}
	report({"terms": {"sexual:ambiguous": ["nude"]}, "semantic": scores({"sexual": confirmed})}).sexual.severity == 6
	rule_ids({"terms": {"sexual:ambiguous": ["nude"]}, "semantic": scores({"sexual": below})}) == set()
	# the meaning alone at that level does not block; an ambiguous term of another category does not confirm
	rule_ids({"semantic": scores({"sexual": confirmed})}) == set()
	rule_ids({"terms": {"gore:ambiguous": ["gore"]}, "semantic": scores({"sexual": confirmed})}) == set()
	off := prompt.evaluate({"prompt": section({"terms": {"sexual:ambiguous": ["nude"]}, "semantic": scores({"sexual": confirmed})})})
		with data.policy_data.prompt.semantic.ambiguous_confirmed_at as null
	off.allow == true
}

test_sexual_content_with_minors_present_blocks_from_level_two if {
	weak := cut("sexual", "2") + 0.001
	rule_ids({"semantic": scores({"sexual": weak})}) == set()
	rule_ids({"terms": {"minors": ["child"]}, "semantic": scores({"sexual": weak})}) == {"prompt.sexual_minors"}
	rule_ids({"semantic": scores({"sexual": weak, "minors": data.policy_data.prompt.semantic.minors_present})}) == {"prompt.sexual_minors"}
}

test_unavailable_semantic_signal_fails_closed if {
	rule_ids({"semantic": {"available": false, "error": "model.safetensors: file not found"}}) == {"prompt.semantic_unavailable"}
	rule_ids({"semantic": null}) == {"prompt.semantic_unavailable"}
}

test_unavailable_semantic_signal_keywords_only_when_data_says_so if {
	inp := {"prompt": section({"semantic": {"available": false, "error": "x"}, "terms": {"gore": ["gore"]}})}
	d := prompt.evaluate(inp) with data.policy_data.prompt.semantic.unavailable as "keywords_only"
	{v.rule_id | some v in d.deny} == {"prompt.gore"}
}
