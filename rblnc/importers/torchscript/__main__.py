"""`python -m rblnc.importers.torchscript > docs/torch_ops.md`: print the supported-op table."""

from . import supported_ops_markdown

print(supported_ops_markdown(), end="")
