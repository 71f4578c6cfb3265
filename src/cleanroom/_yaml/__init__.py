"""A strict YAML reader with source locations, shared by the policy and the runtime config.

The text is composed (never constructed) with ruamel.yaml's safe, YAML 1.2 loader
into a small located tree (:class:`YamlMapping`, :class:`YamlSequence`,
:class:`YamlScalar`), so every later check can say *where* a problem is. The
reader itself is strict: tab characters, anchors/aliases, explicit or unknown
tags, non-string keys and duplicate keys are problems, and problems are
collected (never raised one at a time) in a :class:`Problems` list whose
entries read ``<source>:<line>:<column>: <key path>: <message>`` (1-based).

The ``read_*`` helpers check one node against an expected shape, record a
problem and return ``None`` on a mismatch, so a schema walker can keep going
and report every problem in one pass.
"""

from cleanroom._yaml import parse, read, tree
from cleanroom._yaml.parse import *  # noqa: F403 - each part names its public values
from cleanroom._yaml.read import *  # noqa: F403
from cleanroom._yaml.tree import *  # noqa: F403

__all__ = []
__all__ += tree.__all__
__all__ += parse.__all__
__all__ += read.__all__
