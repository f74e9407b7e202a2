# One image for every catalogan process: api (`catalogan serve`), worker, beat, migrations and the Ray head.
#   docker build -t catalogan:0.1.0 .                                  # CUDA build of PyTorch (models/torch-cuda.txt)
#   docker build --build-arg TORCH_VARIANT=cpu -t catalogan:0.1.0 .    # CPU build, same torch version
FROM python:3.11.11-slim-bookworm

# cuda: the pair pinned in models/torch-cuda.txt; cpu: the same torch version from PyTorch's CPU index.
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 catalogan
WORKDIR /app

# Fashion-MNIST from Debian (the same files as on a development box): `catalogan train --data fashion-mnist`
# trains on it, and the shipped model's memorization index (the workers' near-copy gate) is built from it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

# PyTorch first: the largest layer, cached across code changes (it changes only with models/torch-cuda.txt).
COPY models/torch-cuda.txt /tmp/torch-cuda.txt
RUN if [ "$TORCH_VARIANT" = cpu ]; then \
        pip install "$(grep '^torch==' /tmp/torch-cuda.txt)" --index-url "$TORCH_CPU_INDEX_URL"; \
    else \
        pip install -r /tmp/torch-cuda.txt; \
    fi

COPY pyproject.toml README.md ./
COPY db ./db
COPY models ./models
COPY workers ./workers
COPY scheduler ./scheduler
# cluster: the Ray dashboard and `ray://` addresses on top of the server extra (the ray-head service uses both)
RUN pip install ".[server,cluster]"

USER catalogan
EXPOSE 8000
# Every service in docker-compose.yml names its command; this default serves the API.
CMD ["catalogan", "serve", "--host", "0.0.0.0", "--port", "8000"]
