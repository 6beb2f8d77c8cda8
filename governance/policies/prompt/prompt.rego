# Prompt rules: blocked content categories, protected names, personal data and prompt length.
#
# Input: {"prompt": <the section built by latentops.governance.normalize.analyse_prompt>}.
# The host has already matched the normalised prompt against the lists in
# data.policy_data.prompt (set lookups on token n-grams); this policy decides what the matches
# mean. Personal data arrives the same way: findings the host has validated (phone numbers by
# phonenumbers, identifiers by python-stdnum checksums); the policy decides which kinds are refused.
# Every violation carries a rule id and a sentence a user can act on.
package latentops.prompt

import data.latentops.lib
import rego.v1

cfg := data.policy_data.prompt

# The entry point: the per-category report is a complete rule, computed once per query, and both
# decides and is returned. evaluate(inp) is the same decision as a function (for tests).
decision := object.union(lib.decision(input_violations), {"categories": input_report})

input_report := category_report(input)

input_violations := ((((shape(input) | too_long(input)) | semantic_unavailable(input)) | input_categories) | names(input)) | personal(input)

input_categories := blocking(input_report)

# concat, not sprintf: rego-cpp quotes computed strings passed to sprintf's %s.
category_reason(category, info) := concat("", [
	"the prompt asks for ", cfg.blocked_categories[category], " (severity ", format_int(info.severity, 10), " of 6; ",
	info.evidence, ")",
])

evaluate(inp) := object.union(lib.decision(violations(inp)), {"categories": category_report(inp)})

violations(inp) := ((((shape(inp) | too_long(inp)) | semantic_unavailable(inp)) | categories(inp)) | names(inp)) | personal(inp)

# Fail closed on an input that is not what the host contract promises.
shape(inp) := {lib.violation("prompt.invalid_input", "the prompt was not analysed, so it cannot be allowed")} if {
	not analysed(inp)
	inp.prompt.length <= cfg.max_length
} else := set()

analysed(inp) if {
	inp.prompt.analysed == true
	is_string(inp.prompt.raw)
}

too_long(inp) := {lib.violation(
	"prompt.too_long",
	sprintf("the prompt is %d characters long; the limit is %d", [inp.prompt.length, cfg.max_length]),
)} if {
	inp.prompt.length > cfg.max_length
} else := set()

matched(inp, category) := object.get(terms_of(inp), category, [])

# --- content categories: keyword matches and semantic scores, as severity levels ---------------
#
# Each category in data.policy_data.prompt.block_at has a severity level (0, 2, 4 or 6): the
# higher of its keyword level (a listed term matched: semantic.keyword_level) and its semantic
# level (the host's score against semantic.cuts). A category blocks at the level policy data sets,
# per team when the input names a team (team_block_at), else block_at. sexual_minors is the sexual
# severity when minors are present, and blocks from level 2 whatever the data says.

content_categories := object.keys(cfg.block_at)

# A listed term gives its category the keyword level. A term listed as ambiguous ("nude" in
# "nude lipstick", "gore" in "Al Gore") gives only level 2, which blocks nowhere by default: the
# meaning (the semantic level) decides whether such a prompt is refused. When the meaning scores
# the term's own category at semantic.ambiguous_confirmed_at or above (level 4 by default: "a nude
# person"), the two signals agree and the term counts as listed. null turns this off.
keyword_level(listed, ambiguous, semantic_level) := cfg.semantic.keyword_level if {
	count(listed) > 0
} else := cfg.semantic.keyword_level if {
	count(ambiguous) > 0
	is_number(cfg.semantic.ambiguous_confirmed_at)
	semantic_level >= cfg.semantic.ambiguous_confirmed_at
} else := 2 if {
	count(ambiguous) > 0
} else := 0

semantic_on(inp) if {
	cfg.semantic.enabled == true
	inp.prompt.semantic.available == true
}

score(inp, category) := semantic_score(scores_of(inp), category)

# The level a score reaches: the highest level whose cut it meets (policy data gives the cuts for
# levels 2, 4 and 6, not decreasing).
level_of(cuts, s) := 6 if {
	s >= cuts["6"]
} else := 4 if {
	s >= cuts["4"]
} else := 2 if {
	s >= cuts["2"]
} else := 0

# One content category, each signal computed once: {"severity", "score", "evidence"}. The severity
# is the higher of the keyword level and the semantic level; the evidence names the listed terms
# when they set it, else the nearest exemplar. semantic: the host's scores by category ({} while
# the signal is off); terms: the host's matches by list.
content(category, semantic, terms) := {"severity": max({keyword, semantic_level}), "score": s, "evidence": evidence} if {
	s := semantic_score(semantic, category)
	semantic_level := level_of(cfg.semantic.cuts[category], s)
	listed := object.get(terms, category, [])
	ambiguous := object.get(terms, concat("", [category, ":ambiguous"]), [])
	keyword := keyword_level(listed, ambiguous, semantic_level)
	evidence := content_evidence(category, semantic, array.concat(listed, ambiguous), keyword >= semantic_level, s)
}

# The host's scores while the semantic signal is on, else none; the host's term matches.
scores_of(inp) := inp.prompt.semantic.scores if {
	semantic_on(inp)
	is_object(inp.prompt.semantic.scores)
} else := {}

terms_of(inp) := inp.prompt.terms if {
	is_object(inp.prompt.terms)
} else := {}

semantic_score(semantic, category) := s if {
	s := semantic[category].score
	is_number(s)
} else := 0

content_evidence(category, semantic, terms, terms_decide, s) := concat("", ["matched: ", concat(", ", terms)]) if {
	count(terms) > 0
	terms_decide
} else := concat("", ["closest to \"", semantic[category].exemplar, "\", score ", format_score(s)]) if {
	is_number(semantic[category].score)
} else := ""

# Sexual content involving minors: the sexual severity, when minors are present in the prompt (a
# listed minors term, or the semantic "minors" presence score at or above semantic.minors_present).
minors_present(inp) if count(matched(inp, "minors")) > 0

minors_present(inp) if score(inp, "minors") >= cfg.semantic.minors_present

minors_evidence(inp) := concat("", ["minors matched: ", concat(", ", matched(inp, "minors"))]) if {
	count(matched(inp, "minors")) > 0
} else := concat("", ["minors: closest to \"", inp.prompt.semantic.scores.minors.exemplar, "\", score ", format_score(score(inp, "minors"))])

sexual_minors(inp, sexual) := {"severity": sexual.severity, "evidence": concat("; ", [sexual.evidence, minors_evidence(inp)])} if {
	minors_present(inp)
} else := {"severity": 0, "evidence": ""}

block_at(inp, category) := level if {
	level := cfg.team_block_at[inp.team][category]
} else := cfg.block_at[category]

# Two decimals without sprintf (rego-cpp's sprintf quotes computed values).
format_score(s) := concat("", [format_int(floor(s), 10), ".", substring(format_int(100 + floor((s - floor(s)) * 100), 10), 1, 2)])

categories(inp) := blocking(category_report(inp))

# The categories whose severity reaches the level at which they block.
blocking(report) := {lib.violation(concat("", ["prompt.", category]), category_reason(category, info)) |
	info := report[category]
	info.severity > 0
	info.severity >= info.blocks_at
}

judged_categories := (content_categories | {"sexual"}) - {"sexual_minors"}

# What the decision reports per category, allowed or not: the prompt tester shows it. Each content
# category is judged once; sexual_minors reuses the sexual judgement.
# (In rego-cpp a binding inside a comprehension costs as much as computing it for every element,
# so what the elements share is computed by the caller and passed in; and a function call in a
# comprehension's head loses the enclosing function's arguments, so each element is bound in the
# body.)
category_report(inp) := report_of(inp, judge_all(scores_of(inp), terms_of(inp)))

judge_all(semantic, terms) := {category: judged |
	some category in judged_categories
	judged := content(category, semantic, terms)
}

report_of(inp, judged) := {category: info |
	some category in content_categories
	info := category_info(inp, category, judged)
}

category_info(inp, category, contents) := {
	"severity": minors.severity,
	"blocks_at": 2,
	"score": score(inp, category),
	"evidence": minors.evidence,
} if {
	category == "sexual_minors"
	minors := sexual_minors(inp, contents.sexual)
} else := {
	"severity": contents[category].severity,
	"blocks_at": block_at(inp, category),
	"score": contents[category].score,
	"evidence": contents[category].evidence,
}

# Fail closed when the semantic signal is missing, unless policy data says keyword rules alone
# may decide then.
semantic_unavailable(inp) := {lib.violation(
	"prompt.semantic_unavailable",
	concat("", ["the meaning-based screen is unavailable (", unavailable_reason(inp), "), so the prompt cannot be judged"]),
)} if {
	cfg.semantic.enabled == true
	not inp.prompt.semantic.available == true
	cfg.semantic.unavailable == "deny"
	analysed(inp)
} else := set()

unavailable_reason(inp) := inp.prompt.semantic.error if is_string(inp.prompt.semantic.error) else := "no scores were given"

names(inp) := {lib.violation(
	"prompt.protected_name",
	sprintf("the prompt names %s, a protected %s", [entry.name, entry.category]),
) |
	some entry in inp.prompt.protected_names
}

# Personal data. The host finds candidates and validates them (phonenumbers; python-stdnum
# checksums for IBANs, payment cards, national ids and VAT numbers; emails): the input's
# prompt.personal_data is {"findings": [{"kind", "format", "masked"}]} (see
# latentops.governance.personal_data). The policy decides: a finding denies under
# prompt.personal_data.<kind> unless policy data lists its kind in personal_data.allowed_kinds,
# so a kind the host learns to find is refused until allowed. The reason names the kind (its label
# in personal_data) and the formats found (a region, a card network, a stdnum module), never the value.
personal(inp) := personal_data(inp, object.get(cfg.personal_data, "allowed_kinds", []))

personal_data(inp, allowed_kinds) := {lib.violation(concat("", ["prompt.personal_data.", kind]), personal_reason(kind, formats)) |
	some kind in {finding.kind | some finding in inp.prompt.personal_data.findings}
	not kind in allowed_kinds
	formats := sort({finding.format |
		some finding in inp.prompt.personal_data.findings
		finding.kind == kind
		finding.format != kind
	})
}

personal_reason(kind, formats) := concat("", ["the prompt contains ", personal_label(kind), personal_formats(formats), "; remove it"])

personal_label(kind) := cfg.personal_data[kind] if {
	is_string(cfg.personal_data[kind])
} else := concat("", ["personal data (", kind, ")"])

personal_formats(formats) := concat("", [" (", concat(", ", formats), ")"]) if {
	count(formats) > 0
} else := ""
