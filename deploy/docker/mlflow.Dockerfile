# syntax=docker/dockerfile:1.7
# MLflow tracking server with the PostgreSQL driver and the S3 client its backends need
# (the upstream image ships neither).
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.5.0
FROM ${MLFLOW_IMAGE}
RUN pip install --no-cache-dir "psycopg2-binary>=2.9" "boto3>=1.34"
