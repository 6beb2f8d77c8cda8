"""Rotating the signing key of the audit checkpoints (``latentops audit rotate-key``).

The old key signs a final checkpoint, its public half stays in the keyring beside the key file
(so every checkpoint it signed still verifies), and the new key takes its place; the rotation is
an audit entry of its own, covered by the new key's first checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from latentops.governance import audit, checkpoints
from latentops.governance.tables import AuditCheckpoint

log = logging.getLogger(__name__)


def rotate_key(session: Session, *, key_path: Path, sink: checkpoints.CheckpointSink, actor: audit.Actor | str,
               reason: str = "") -> tuple[str, str, AuditCheckpoint]:
    """Replace the signing key at ``key_path`` with a new one; keep the old public key.

    1. the old key signs a final checkpoint over every entry so far (its own transaction);
    2. its public half is kept in the keyring, the new key is written in its place (the old private
       key is overwritten: it can sign nothing more);
    3. in the caller's transaction, the rotation is audited (``audit.key.rotate``) and the new key
       signs its first checkpoint, which covers that entry.

    Returns ``(old key id, new key id, the new key's first checkpoint)``. ``session`` must not have
    written yet: step 1 commits on a connection of its own.
    """
    old = checkpoints.load_signing_key(key_path)
    keyring = checkpoints.signing_keyring(key_path)
    engine = session.get_bind().engine
    with Session(bind=engine, expire_on_commit=False) as sealing, sealing.begin():
        final = checkpoints.create(sealing, signing_key=old, sink=sink, force=True, keyring=keyring)
        final_size = final.tree_size
    checkpoints.add_to_keyring(key_path, old.public_key())
    new = Ed25519PrivateKey.generate()
    checkpoints.write_atomically(key_path, new.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()), 0o600)
    checkpoints.add_to_keyring(key_path, new.public_key())
    old_id, new_id = checkpoints.key_id(old.public_key()), checkpoints.key_id(new.public_key())
    log.warning("rotated the audit checkpoint signing key %s: %s -> %s", key_path, old_id, new_id)
    audit.record(session, actor=actor, action="audit.key.rotate", resource="audit:signing-key",
                 details={"old_key_id": old_id, "new_key_id": new_id, "sealed_tree_size": final_size,
                          "reason": reason})
    first = checkpoints.create(session, signing_key=new, sink=sink, force=True,
                               keyring={**keyring, new_id: new.public_key()})
    return old_id, new_id, first
