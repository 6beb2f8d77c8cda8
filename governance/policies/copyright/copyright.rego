# Copyright: an image that matches a protected work in the reference index is not released, and a
# training upload that matches one is refused, unless the team holds a licence grant covering the
# work (for the rights holder as a whole, or for that one reference). Which kinds of use a licence
# covers is data.
#
# Input: {"kind": "output"|"training_upload", "team": str,
#         "matches": [{"reference_id": int, "owner": str, "method": str, "score": number}],
#         "licences": [{"owner": str, "reference_id": int|null}]}   # the team's active grants
package latentops.copyright

import data.latentops.lib
import rego.v1

cfg := data.policy_data.copyright

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := unknown_kind(inp) | protected(inp)

unknown_kind(inp) := {lib.violation("copyright.unknown_kind", concat("", ["unknown use '", inp.kind, "'"]))} if {
	not inp.kind in cfg.kinds
} else := set()

licensed(inp, m) if {
	inp.kind in cfg.licence_applies_to
	some l in inp.licences
	l.reference_id == m.reference_id
}

licensed(inp, m) if {
	inp.kind in cfg.licence_applies_to
	some l in inp.licences
	l.reference_id == null
	l.owner == m.owner
}

protected(inp) := {lib.violation(
	"copyright.protected_work",
	sprintf("matches protected work %v of %s (%s, score %v) and the team holds no licence for it", [m.reference_id, m.owner, m.method, m.score]),
) |
	inp.kind in cfg.kinds
	some m in inp.matches
	not licensed(inp, m)
}
