#!/bin/sh
# Runs once, on the first start of an empty PostgreSQL volume: a database and role for MLflow
# beside latentops' own (created by POSTGRES_DB / POSTGRES_USER).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE mlflow LOGIN PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE mlflow OWNER mlflow;
SQL
