#!/bin/sh
# Runs once, on an empty data volume (docker-entrypoint-initdb.d): one database per
# service, each owned by that service's own role, so a service cannot read another's
# tables. Passwords come from the environment (deploy/.env), never from this file.
set -eu

create() {
  role="$1"; password="$2"; database="$3"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$role" --set=password="$password" --set=database="$database" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
}

create surveymesh_delivery "$DELIVERY_DB_PASSWORD" surveymesh_delivery
create surveymesh_reporting "$REPORTING_DB_PASSWORD" surveymesh_reporting
create surveymesh_notification "$NOTIFICATION_DB_PASSWORD" surveymesh_notification
