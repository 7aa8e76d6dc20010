"""Boot images that work on a real account, chosen per shape, resolved per region.

A hand-picked AMI id is valid in one region and goes stale; a plain Debian image has no GPU
driver. So by default:

* **AWS** resolves the image per region from the public SSM parameters AWS publishes (and
  keeps current): the Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) for
  GPU shapes, the current Amazon Linux 2023 for CPU shapes; arm64 variants for Graviton.
  ``AwsSettings.ami_per_region`` overrides per region.
* **GCP** uses image families: a Deep Learning VM image (CUDA, driver installed at first
  boot via the ``install-nvidia-driver`` metadata) for GPU shapes, Debian 12 for CPU shapes.
  ``GcpSettings.image`` / ``gpu_image`` override.

Pure module (no SDK import); the provisioners make the calls.
"""

from __future__ import annotations

import re

from prefect_cloudsched.core.catalog import Offer

#: SSM parameters AWS publishes in every commercial region (values: an AMI id).
AWS_GPU_PARAMETER = (
    "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/"
    "latest/ami-id"
)
AWS_CPU_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"

#: GCP image families (project/family paths GCE resolves to the newest image).
GCP_GPU_IMAGE = (
    "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
)
GCP_CPU_IMAGE = "projects/debian-cloud/global/images/family/debian-12"

#: Graviton families: a digit, then letters containing ``g`` (m7g, c7gn, r8gd, g5g, t4g).
_GRAVITON = re.compile(r"^[a-z]+\d[a-z]*g[a-z]*$")


def aws_arch(instance_type: str) -> str:
    """``arm64`` for Graviton types, else ``x86_64`` (the SSM parameters' spelling)."""
    family = instance_type.split(".")[0]
    return "arm64" if _GRAVITON.match(family) else "x86_64"


def aws_image_parameter(offer: Offer) -> str:
    """The public SSM parameter naming the current image for ``offer``'s shape."""
    template = AWS_GPU_PARAMETER if offer.gpu_count else AWS_CPU_PARAMETER
    return template.format(arch=aws_arch(offer.instance_type))


def gcp_image(offer: Offer, *, cpu_image: str, gpu_image: str) -> str:
    """The GCE boot image for ``offer``'s shape (GPU shapes get the driver image)."""
    return gpu_image if offer.gpu_count else cpu_image
