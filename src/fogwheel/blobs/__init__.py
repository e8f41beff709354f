"""Content-addressed blobs: every blob is named by the SHA-256 of its bytes."""

from fogwheel.blobs.store import BlobStore, FileBlobStore, is_sha256, sha256_hex

__all__ = ["BlobStore", "FileBlobStore", "is_sha256", "sha256_hex"]
