# AlignNet-BCI service: `alignnet serve` on CPU (ONNX Runtime) with the default model, or a mounted artifact.
#   docker build -t alignnet-bci .
#   docker run --rm -p 8000:8000 alignnet-bci                                   # default model, HTTP only
#   docker run --rm -v $PWD/runs/x/artifact:/model:ro -e ALIGNNET_ARTIFACT=/model -p 8000:8000 alignnet-bci
#   docker run --rm --network host alignnet-bci --lsl --lsl-source MySpikes    # with the LSL bridge
# LSL discovery uses UDP multicast/broadcast, which Docker's default bridge network does not forward: run with
# `--network host` (Linux) when the container must find or publish LSL streams.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU build of torch from the PyTorch index (the PyPI wheel is the multi-GB CUDA build); spikingjelly without its
# torchvision/torchaudio requirements, as scripts/setup.sh does
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
    && pip install --no-deps "spikingjelly==2.0.0"

COPY pyproject.toml README.md ./
COPY alignnet ./alignnet
COPY model ./model
COPY recordings ./recordings
COPY training ./training
COPY service ./service
COPY bench ./bench
COPY clients ./clients
COPY cli ./cli
COPY configs ./configs
RUN pip install . \
    && useradd --create-home --uid 10001 alignnet
USER 10001

# 0.0.0.0 so the published port reaches the service. What guards it, from the environment (README, "What it serves,
# and to whom"): ALIGNNET_ALLOWED_HOSTS (Host names answered; default localhost,127.0.0.1,::1: add the name clients
# use), ALIGNNET_ADMIN_TOKEN (without it /reload and /calibrate refuse every client outside the container),
# ALIGNNET_CORS_ORIGINS (browser origins allowed), ALIGNNET_ARTIFACT_KEY (serve only signed artifacts). Put TLS in
# front (a reverse proxy) if it leaves the lab network.
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["alignnet", "serve", "--host", "0.0.0.0", "--port", "8000"]
