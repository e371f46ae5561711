# The image KubeRay's pods run (`make kuberay IMAGE=...`): Ray with CUDA, this repository
# installed in place at /app (conf/ stays beside the code, as Hydra expects), torch from PyPI.
#   docker build -t <registry>/alexnet-orchestrator:<tag> . && docker push <registry>/alexnet-orchestrator:<tag>
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
WORKDIR /app
COPY --chown=ray:users . /app
RUN pip install --no-cache-dir -e /app
