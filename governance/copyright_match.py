"""Matching images against the protected works: fingerprints and the index they are looked up in.

Three methods, none of which needs downloaded weights except the last:

* **pHash** (DCT perceptual hash, 64 bits) of the reference, of its mirror image, and of five 80%
  crops and one 90% crop of each. Resizing, JPEG compression and brightness/saturation changes
  move a pHash by a few bits; mirroring and cropping are covered by the stored variants. A query
  within ``phash_max_distance`` bits of any variant matches outright.
* **ORB keypoints with geometric verification** (OpenCV): ratio-tested matches between the query
  (and its mirror) and a candidate reference must agree on one homography (RANSAC) with at least
  ``orb_min_inliers`` inliers. This catches crops and resizes that moved the hash too far.
  Candidates are the few references nearest by pHash (within ``PHASH_CANDIDATE`` bits), the
  nearest by CLIP embedding with similarity >= ``clip_min_similarity``, and, for small indexes
  (``EXHAUSTIVE_MAX`` references or fewer), all of them.
* **CLIP embeddings with FAISS** (inner product on normalised vectors) when CLIP weights are
  imported: retrieves the ``CLIP_CANDIDATES`` nearest references in milliseconds (exact search
  below ``HNSW_FROM`` references, an HNSW graph above). Embedding similarity alone never flags
  an image (two photographs of the same landmark are close in CLIP space but neither copies the
  other): a ``clip`` match needs similarity >= ``clip_min_similarity`` plus weaker geometric
  evidence (pHash within ``phash_support_distance`` bits or ``orb_support_inliers`` inliers).

The five thresholds that decide match or no match are policy data (``copyright.thresholds`` in
``governance/policies/copyright/data.json``), read per lookup (``MatchThresholds.in_force``), so
compliance tunes them with ``latentops policy set-data`` like the content thresholds; the bundle's
shape check refuses a bad value and the previous revision stays in force. The constants below
set how far the search looks (candidate radius and counts, index layout), not what matches.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageOps
from sqlalchemy.orm import Session

from latentops.governance import policy
from latentops.governance.tables import CopyrightReference

# References within PHASH_CANDIDATE bits become ORB candidates; the hash search reaches further
# when the policy's ``phash_max_distance`` is looser than that.
PHASH_CANDIDATE = 14
PHASH_CANDIDATES = 4
ORB_FEATURES = 500
ORB_SIDE = 512
EXHAUSTIVE_MAX = 64
CLIP_CANDIDATES = 4
HNSW_FROM = 20_000
# (left, top, right, bottom) as fractions: the whole image, five 80% crops and a 90% centre crop.
CROPS = ((0, 0, 1, 1), (0.1, 0.1, 0.9, 0.9), (0, 0, 0.8, 0.8), (0.2, 0, 1, 0.8), (0, 0.2, 0.8, 1), (0.2, 0.2, 1, 1),
         (0.05, 0.05, 0.95, 0.95))


@dataclass(frozen=True)
class MatchThresholds:
    """The thresholds that decide match or no match (policy data ``copyright.thresholds``).

    The bundle's shape check guarantees exactly these keys and sane ranges, so ``in_force``
    never sees a partial or mistyped set.
    """

    phash_max_distance: int  # bits: a pHash variant this close matches outright (``phash``)
    orb_min_inliers: int  # RANSAC inliers for an ``orb`` match
    clip_min_similarity: float  # cosine similarity a ``clip`` match needs ...
    phash_support_distance: int  # ... plus a pHash variant this close ...
    orb_support_inliers: int  # ... or this many ORB inliers

    @classmethod
    def in_force(cls, session: Session | None = None) -> MatchThresholds:
        """The thresholds of the policy revision in force; with a session, data edits made through
        the product are picked up first (as ``policy.decide`` does), so a fresh process never
        matches with the files' values while its decisions use the edited ones."""
        if session is not None:
            policy.get_service().refresh(session)
        return cls(**policy.policy_data("copyright.thresholds"))


# --- fingerprints ---------------------------------------------------------------------------------


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash: low 8x8 DCT coefficients of a 32x32 grey image against their median."""
    import cv2

    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float32)
    low = cv2.dct(grey)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def phash_variants(image: Image.Image) -> list[int]:
    """The hashes a reference is indexed under: each crop of the image and of its mirror."""
    width, height = image.size
    hashes = []
    for source in (image, ImageOps.mirror(image)):
        for left, top, right, bottom in CROPS:
            box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
            hashes.append(phash(source.crop(box) if box != (0, 0, width, height) else source))
    return hashes


@dataclass
class OrbFeatures:
    points: np.ndarray  # (n, 2) float32, in the resized image's coordinates
    descriptors: np.ndarray  # (n, 32) uint8

    def to_json(self) -> dict[str, str]:
        return {"points": base64.b64encode(self.points.astype(np.float32).tobytes()).decode(),
                "descriptors": base64.b64encode(self.descriptors.astype(np.uint8).tobytes()).decode()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> OrbFeatures:
        points = np.frombuffer(base64.b64decode(data["points"]), dtype=np.float32).reshape(-1, 2)
        descriptors = np.frombuffer(base64.b64decode(data["descriptors"]), dtype=np.uint8).reshape(-1, 32)
        return cls(points, descriptors)


def orb_features(image: Image.Image) -> OrbFeatures:
    import cv2

    grey = image.convert("L")
    scale = ORB_SIDE / max(grey.size)
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.LANCZOS)
    orb = cv2.ORB_create(nfeatures=ORB_FEATURES)  # type: ignore[attr-defined]
    keypoints, descriptors = orb.detectAndCompute(np.asarray(grey), None)
    if descriptors is None or not keypoints:
        return OrbFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    return OrbFeatures(np.array([k.pt for k in keypoints], dtype=np.float32), descriptors)


def orb_inliers(query: OrbFeatures, reference: OrbFeatures, *, at_least: int = 8) -> int:
    """Matches consistent with one homography (RANSAC) after Lowe's ratio test; 0 when too few.

    The inlier count never exceeds the ratio-tested matches, so a caller that only asks whether
    it reaches ``at_least`` passes that threshold and fewer matches return 0 without RANSAC
    (the costly step: it runs to its iteration limit on unrelated pairs).
    """
    import cv2

    at_least = max(8, at_least)
    if len(query.descriptors) < at_least or len(reference.descriptors) < at_least:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(query.descriptors, reference.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < at_least:
        return 0
    source = query.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    target = reference.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    _, mask = cv2.findHomography(source, target, cv2.RANSAC, 5.0)
    return int(mask.sum()) if mask is not None else 0


def _hamming(a: np.ndarray, b: int) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, np.uint64(b)))


def _code(value: int) -> np.ndarray:
    """A 64-bit hash as the one 8-byte row a FAISS binary index takes (native byte order, as stored)."""
    return np.array([value], dtype=np.uint64).view(np.uint8).reshape(1, 8)


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """Run a single-query FAISS call on the calling thread alone.

    A binary range search or an exact inner-product search over one query splits the scan across
    FAISS's OpenMP team; on a busy machine starting and spinning that team costs 15-20 ms of CPU
    for a scan of 0.5 ms (1.4 million hashes) or 1.5 ms (20,000 embeddings). The setting is per
    calling thread and FAISS ships its own OpenMP runtime, so torch's threads are untouched.
    """
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


# --- the in-memory index ---------------------------------------------------------------------------


@dataclass
class ReferenceIndex:
    """Hashes (n x variants), owners, a FAISS binary index over every hash variant and, when
    present, a FAISS index over embeddings."""

    ids: np.ndarray
    owners: list[str]
    hashes: np.ndarray
    embedded_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    faiss_index: Any = None
    hash_index: Any = None

    @classmethod
    def build(cls, ids: Sequence[int], owners: Sequence[str], hashes: np.ndarray,
              embeddings: dict[int, np.ndarray] | None = None) -> ReferenceIndex:
        import faiss

        index = cls(np.asarray(ids, dtype=np.int64), list(owners), np.asarray(hashes, dtype=np.uint64))
        # Row r of the binary index is variant r % variants of reference r // variants. An exact
        # range search over packed 64-bit codes is one popcount per variant in C++: 0.5 ms for
        # 1.4 million variants, where the numpy scan with a per-reference minimum took 5-8 ms.
        index.hash_index = faiss.IndexBinaryFlat(64)
        if index.hashes.size:
            index.hash_index.add(np.ascontiguousarray(index.hashes).reshape(-1).view(np.uint8).reshape(-1, 8))
        if embeddings:
            keys = sorted(embeddings)
            matrix = np.stack([embeddings[k] for k in keys]).astype(np.float32)
            search: Any
            if len(keys) >= HNSW_FROM:
                # Exact search is O(n) per query; a graph index keeps large indexes in milliseconds.
                search = faiss.IndexHNSWFlat(matrix.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
                search.hnsw.efSearch = 64
            else:
                search = faiss.IndexFlatIP(matrix.shape[1])
            search.add(matrix)
            index.embedded_ids, index.faiss_index = np.asarray(keys, dtype=np.int64), search
        return index

    def nearest_by_hash(self, query: int, radius: int = PHASH_CANDIDATE) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, distances)`` of at most ``PHASH_CANDIDATES`` references nearest to ``query``
        among those with a variant within ``radius`` bits, nearest first.

        Exact: every variant within the radius is found, so no match or candidate is lost to the
        index (matching looks no further than ``PHASH_CANDIDATE`` bits, or the policy's pHash match
        distance when that is larger).
        """
        if len(self.ids) == 0 or self.hash_index is None or self.hash_index.ntotal == 0:
            return self.ids[:0], np.zeros(0, np.int64)
        with _one_faiss_thread():
            _, distances, rows = self.hash_index.range_search(_code(query), radius + 1)  # distance < radius + 1
        if len(rows) == 0:
            return self.ids[:0], np.zeros(0, np.int64)
        references = rows // self.hashes.shape[1]
        order = np.lexsort((references, distances))  # by distance, then reference
        references, distances = references[order], distances[order].astype(np.int64)
        _, first = np.unique(references, return_index=True)  # each reference at its nearest variant
        first.sort()
        first = first[:PHASH_CANDIDATES]
        return self.ids[references[first]], distances[first]

    def nearest_by_embedding(self, embedding: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.faiss_index is None or embedding is None or self.faiss_index.ntotal == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        k = min(CLIP_CANDIDATES, self.faiss_index.ntotal)
        with _one_faiss_thread():  # the exact index splits one query over the team as well
            similarity, rows = self.faiss_index.search(embedding.reshape(1, -1).astype(np.float32), k)
        keep = rows[0] >= 0
        return self.embedded_ids[rows[0][keep]], similarity[0][keep]


_index_cache: dict[str, tuple[tuple[int, int, str], ReferenceIndex]] = {}
_index_lock = threading.Lock()


def load_index(session: Session, *, clip_sha: str = "") -> ReferenceIndex:
    """The reference index of this database, rebuilt when references were added or removed."""
    count, top = session.execute(sa.select(sa.func.count(CopyrightReference.id), sa.func.max(CopyrightReference.id))).one()
    key = str(session.get_bind().engine.url)
    stamp = (int(count or 0), int(top or 0), clip_sha)
    with _index_lock:
        cached = _index_cache.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
        rows = session.execute(sa.select(CopyrightReference.id, CopyrightReference.owner, CopyrightReference.features)
                               .order_by(CopyrightReference.id)).all()
        variants = 2 * len(CROPS)
        hashes = np.array([[int(h, 16) for h in f.get("phashes", [])] for _, _, f in rows], dtype=np.uint64).reshape(-1, variants)
        embeddings = {rid: np.frombuffer(base64.b64decode(f["embedding"]), dtype=np.float32)
                      for rid, _, f in rows if clip_sha and f.get("embedding") and f.get("embedding_sha") == clip_sha}
        index = ReferenceIndex.build([r[0] for r in rows], [r[1] for r in rows], hashes, embeddings)
        _index_cache[key] = (stamp, index)
        return index



# --- matching --------------------------------------------------------------------------------------


def match_in_index(index: ReferenceIndex, image: Image.Image, *, embedding: np.ndarray | None,
                   orb_loader: Any, thresholds: MatchThresholds | None = None) -> list[dict[str, Any]]:
    """Matching against a loaded index (the benchmark calls this directly).

    ``thresholds`` default to those in force (``MatchThresholds.in_force()``).
    """
    limits = thresholds or MatchThresholds.in_force()
    query = phash(image)
    owner_of = _OwnerLookup(index)
    found: dict[int, dict[str, Any]] = {}
    hash_ids, hash_distances = index.nearest_by_hash(query, max(PHASH_CANDIDATE, limits.phash_max_distance))
    distance_of = {int(i): int(d) for i, d in zip(hash_ids, hash_distances, strict=True)}
    for rid, distance in distance_of.items():
        if distance <= limits.phash_max_distance:
            found[rid] = {"reference_id": rid, "owner": owner_of[rid], "method": "phash", "score": round(1 - distance / 64, 4)}
    clip_ids, similarities = index.nearest_by_embedding(embedding)
    similarity_of = {int(i): float(s) for i, s in zip(clip_ids, similarities, strict=True)}
    # Only embedding neighbours that could become a ``clip`` match are worth a geometric check.
    candidates = ({rid for rid, d in distance_of.items() if d <= PHASH_CANDIDATE}
                  | {rid for rid, s in similarity_of.items() if s >= limits.clip_min_similarity})
    if len(index.ids) <= EXHAUSTIVE_MAX:
        candidates |= set(index.ids.tolist())
    candidates -= set(found)
    inliers: dict[int, int] = {}
    if candidates:
        query_features = [orb_features(image), orb_features(ImageOps.mirror(image))]
        for rid, reference in orb_loader(sorted(candidates)).items():
            # The fewest inliers that change the outcome: support for a ``clip`` match, else an ``orb`` match.
            needed = (min(limits.orb_support_inliers, limits.orb_min_inliers)
                      if similarity_of.get(rid, 0.0) >= limits.clip_min_similarity else limits.orb_min_inliers)
            inliers[rid] = max(orb_inliers(q, reference, at_least=needed) for q in query_features)
            if inliers[rid] >= limits.orb_min_inliers:
                score = round(inliers[rid] / max(1, min(len(query_features[0].descriptors), len(reference.descriptors))), 4)
                found[rid] = {"reference_id": rid, "owner": owner_of[rid], "method": "orb", "score": min(1.0, score)}
    for rid, similarity in similarity_of.items():
        if rid in found or similarity < limits.clip_min_similarity:
            continue
        if (_phash_distance(index, rid, query) <= limits.phash_support_distance
                or inliers.get(rid, 0) >= limits.orb_support_inliers):
            found[rid] = {"reference_id": rid, "owner": owner_of[rid], "method": "clip", "score": round(similarity, 4)}
    return sorted(found.values(), key=lambda m: (-m["score"], m["reference_id"]))


class _OwnerLookup:
    """``owner_of[rid]`` by binary search over the sorted ids (no per-query dict of the whole index)."""

    def __init__(self, index: ReferenceIndex) -> None:
        self.index = index

    def __getitem__(self, rid: int) -> str:
        return self.index.owners[int(np.searchsorted(self.index.ids, rid))]


def _phash_distance(index: ReferenceIndex, rid: int, query: int) -> int:
    row = int(np.searchsorted(index.ids, rid))
    return int(_hamming(index.hashes[row], query).min())
