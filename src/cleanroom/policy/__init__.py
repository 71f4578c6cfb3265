"""Repository policies: locate, parse strictly, normalise, compile, hash, decide.

``load_policy(directory)`` turns ``cleanroom.yaml`` (or the fallback
``.buildkite/cleanroom.yaml``) into an immutable :class:`CompiledPolicy` whose
``policy_hash`` identifies its rules; :func:`decide` answers whether egress to
a destination is allowed and which rule said so.
"""

from __future__ import annotations

from cleanroom.policy.compile import compile_policy_text
from cleanroom.policy.decide import decide, name_allowed
from cleanroom.policy.hosts import HostKind, HostSpec, InvalidHost, normalize_host, parse_host
from cleanroom.policy.image import (
    DebianImage,
    ImageRef,
    ImageSpec,
    InvalidImageRef,
    OciImage,
    Resources,
    parse_image_ref,
    require_image_ref,
)
from cleanroom.policy.load import find_policy, load_policy
from cleanroom.policy.model import (
    DEFAULT_ALLOW_PORTS,
    AllowRule,
    CompiledPolicy,
    Decision,
    DenyRule,
)
from cleanroom.policy.sandbox import check_resources, select_image

__all__ = [
    "DEFAULT_ALLOW_PORTS",
    "AllowRule",
    "CompiledPolicy",
    "DebianImage",
    "Decision",
    "DenyRule",
    "HostKind",
    "HostSpec",
    "ImageRef",
    "ImageSpec",
    "InvalidHost",
    "InvalidImageRef",
    "OciImage",
    "Resources",
    "check_resources",
    "compile_policy_text",
    "decide",
    "find_policy",
    "load_policy",
    "name_allowed",
    "normalize_host",
    "parse_host",
    "parse_image_ref",
    "require_image_ref",
    "select_image",
]
