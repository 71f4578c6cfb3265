"""Repository policies: locate, parse strictly, normalise, compile, hash, decide.

``load_policy(directory)`` turns ``cleanroom.yaml`` (or the fallback
``.buildkite/cleanroom.yaml``) into an immutable :class:`CompiledPolicy` whose
``policy_hash`` identifies its rules; :func:`decide` answers whether egress to
a destination is allowed and which rule said so.
"""

from __future__ import annotations

from cleanroom.policy.ceiling import (
    ANY_NAME,
    Ceiling,
    CeilingHost,
    Excess,
    PortRange,
    ceiling_excess,
    check_ceiling,
    host_within,
    parse_port_range,
    raise_excess,
    timeout_excess,
)
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
from cleanroom.policy.imagepattern import ImagePattern, parse_image_pattern
from cleanroom.policy.isolation import (
    ISOLATION_REQUIREMENTS,
    IsolationRequirement,
    isolation_mechanism,
    satisfies,
    strongest,
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
    "ANY_NAME",
    "DEFAULT_ALLOW_PORTS",
    "ISOLATION_REQUIREMENTS",
    "AllowRule",
    "Ceiling",
    "CeilingHost",
    "CompiledPolicy",
    "DebianImage",
    "Decision",
    "DenyRule",
    "Excess",
    "HostKind",
    "HostSpec",
    "ImagePattern",
    "ImageRef",
    "ImageSpec",
    "InvalidHost",
    "InvalidImageRef",
    "IsolationRequirement",
    "OciImage",
    "PortRange",
    "Resources",
    "ceiling_excess",
    "check_ceiling",
    "check_resources",
    "compile_policy_text",
    "decide",
    "find_policy",
    "host_within",
    "isolation_mechanism",
    "load_policy",
    "name_allowed",
    "normalize_host",
    "parse_host",
    "parse_image_pattern",
    "parse_image_ref",
    "parse_port_range",
    "raise_excess",
    "require_image_ref",
    "satisfies",
    "select_image",
    "strongest",
    "timeout_excess",
]
