# The Airflow image of a trait-lora deployment (docker-compose.yaml): every component (api-server,
# scheduler, dag-processor, worker, triggerer) runs this image, so the provider entry point (the
# `together` connection type) and the trigger's classpath import in all of them.
#   docker compose build        (or: docker build -t trait-lora-airflow:0.1.0 .)
# See docs/deploy.md.
FROM apache/airflow:3.3.2

ENV PYTHONDONTWRITEBYTECODE=1

# The pinned requirements, resolved against the full freeze this project is tested with. torch comes
# from PyTorch's CPU index: only the local trainer uses it, and the Together path never imports it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/trait-lora/
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -r /opt/trait-lora/requirements.txt -c /opt/trait-lora/constraints.txt

# The package itself (src/ layout, installed, not copied into plugins/): the apache_airflow_provider
# entry point registers the Together hook, connection form and trigger in every component.
COPY --chown=airflow:0 pyproject.toml README.md /opt/trait-lora/
COPY --chown=airflow:0 src /opt/trait-lora/src
COPY --chown=airflow:0 scripts /opt/trait-lora/scripts
# Build-time checks that import no Airflow (importing airflow would write an airflow.cfg, with secrets,
# into the image): the provider entry point is registered, the trigger module is installed, and the
# Celery provider of the base image (CeleryExecutor) survived the install.
RUN pip install --no-cache-dir --no-deps /opt/trait-lora \
    && python -c "from importlib.metadata import entry_points as e; from importlib.util import find_spec as f; \
assert any(x.value == 'trait_lora.provider:get_provider_info' for x in e(group='apache_airflow_provider')); \
assert f('trait_lora.provider.triggers.together') is not None" \
    && pip show apache-airflow-providers-celery >/dev/null

# The mount points (docker-compose.yaml): dags/, plugins/, include/ from the checkout; outputs/ a volume
# shared by every component. Created here, owned by airflow:0 and group-writable, so a named volume
# mounted on them starts writable by the compose file's AIRFLOW_UID (group 0).
USER root
RUN mkdir -p /opt/airflow/outputs /opt/airflow/include /opt/airflow/config \
    && chown -R airflow:0 /opt/airflow/outputs /opt/airflow/include /opt/airflow/config \
    && chmod -R g+rwX /opt/airflow/outputs /opt/airflow/config
USER airflow

ENV AIRFLOW__TRAIT_LORA__SHARDS_DIR=/opt/airflow/include/sample_shards \
    AIRFLOW__TRAIT_LORA__OUTPUT_DIR=/opt/airflow/outputs
