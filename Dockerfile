# One image for the API, the migrate job and the GPU workers.
#   docker build -t glai .                                          # CUDA-enabled torch from PyPI
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t glai:cpu .
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.4,<2.15"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GLAI_DATA_DIR=/data

# torch first, in its own layer: it is by far the largest dependency and changes least often.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
        pip install "$TORCH_SPEC"; \
    fi

WORKDIR /app
COPY . /app
RUN touch README.md && pip install /app \
    && useradd --create-home --uid 1000 glai \
    && mkdir -p /data && chown glai:glai /data

USER glai
VOLUME ["/data"]
EXPOSE 8000

# The compose file picks the role; the default is the API.
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
