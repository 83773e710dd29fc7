"""Names and limits shared by the library and its command lines, importable without torch (so that `--help`
and flag errors answer at once)."""

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
"""The model of the paper's numbers; SD 1.5 (same layout) works as well."""

MODEL_HELP = (f"Hub id, local diffusers folder, or a built-in random-weight model for smoke runs: tiny (SD layout), "
              f"tiny-xl (SDXL layout). DiffCut's paper uses segmind/SSD-1B (default {DEFAULT_MODEL})")
"""What every command line's `--model` accepts."""

PRECISIONS = ("float32", "float16", "bfloat16")
"""Model precisions by name (`diffseg.model.DTYPES` maps them to torch dtypes)."""

MAX_PIXELS = 8192 * 8192
"""Default decompression-bomb guard: 67 megapixels. A bomb (a small file that decodes to gigabytes) is
refused from its header, before any pixel is decoded."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
"""File name extensions read as images, everywhere (CLI, labeling job, datasets). Animated GIFs are refused
image by image, like any multi-frame file."""
