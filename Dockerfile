# One image for every catalogan process: api (`catalogan serve`), worker, beat, migrations and the Ray head.
#   docker build -t catalogan .                                                         # CUDA wheels of PyTorch
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t catalogan .   # CPU only
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 catalogan
WORKDIR /app

# PyTorch first, from the index that matches the hardware: the largest layer, cached across code changes.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY db ./db
COPY models ./models
COPY workers ./workers
COPY scheduler ./scheduler
RUN pip install "."

USER catalogan
EXPOSE 8000
# Every service in docker-compose.yml names its command; this default serves the API.
CMD ["catalogan", "serve", "--host", "0.0.0.0", "--port", "8000"]
