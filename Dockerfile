# The stepflash server image used by `stepflash deploy compose` (stepflash:<version>).
#   docker build -t stepflash:0.1.0 .
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stepflash ./stepflash
# llama.cpp for the embedded model, built portable (no -march=native)
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
RUN pip install --no-cache-dir . && useradd --create-home stepflash
USER stepflash
EXPOSE 8000
CMD ["stepflash", "serve", "--host", "0.0.0.0"]
