"""Erasable identities of audit actors: pseudonyms and the per-subject keys that reveal them."""
