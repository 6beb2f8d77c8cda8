"""``/api/v1/policies``: the policy revision in force, each domain's source and data, evaluation,
and the live prompt check.

``POST /policies/{path}/evaluate`` is a recorded decision (like ``latentops policy eval``).
``POST /policies/prompt/check`` is the live check behind the prompt box: evaluated, not recorded
(a keystroke is not evidence; the generation request that follows is decided and recorded), and
the prompt text is never logged.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from latentops.governance import access, policy
from latentops.governance.policy_bundle import DATA_ROOT
from latentops.platform.api.deps import PrincipalDep, SessionDep
from latentops.platform.errors import NotFound
from pydantic import BaseModel, Field

router = APIRouter(tags=["policies"])
MAX_PROMPT_CHARS = 20_000


class EvaluateRequest(BaseModel):
    input: dict[str, Any] = Field(description="The policy's documented input; 'subject' is the caller when absent.")


class PromptCheck(BaseModel):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)


@router.get("/policies")
def status(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """The revision in force, the engine, the policy paths and the last reload error."""
    access.check(session, principal=principal, action="policies.read")
    policy.get_service().refresh(session)
    return policy.status()


@router.get("/policies/{path}")
def source(path: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """One domain's Rego modules, tests and effective data, with the revision."""
    access.check(session, principal=principal, action="policies.read")
    service = policy.get_service()
    service.refresh(session)
    bundle = service.bundle
    if bundle is None or path not in bundle.paths:
        raise NotFound(f"path: no policy domain {path!r}")
    prefix = f"{path}/"
    return {"path": path, "revision": bundle.revision,
            "modules": {name: text for name, text in bundle.modules.items() if name.startswith(prefix)},
            "tests": {name: text for name, text in bundle.tests.items() if name.startswith(prefix)},
            "data": bundle.data[DATA_ROOT].get(path, {})}


@router.post("/policies/{path}/evaluate")
def evaluate(path: str, body: EvaluateRequest, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Evaluate an input against a domain; the decision is recorded and audited."""
    access.check(session, principal=principal, action="policies.evaluate")
    decision = policy.decide(path, body.input, session=session, actor=principal.user)
    return {**decision.to_json(), "decision_id": decision.decision_id, "path": path}


@router.post("/policies/prompt/check")
def check_prompt(body: PromptCheck, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Would this prompt be allowed? Reasons name the rule; nothing is recorded."""
    access.check(session, principal=principal, action="prompt.check")
    policy.get_service().refresh(session)
    decision = policy.evaluate("prompt", {"prompt": body.prompt})
    return {**decision.to_json(), "recorded": False}
