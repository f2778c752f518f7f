#!/usr/bin/env bash
# Checks a Grafana dashboard JSON against Grafana's own schema for it: the `Dashboard` type of
# the @grafana/schema npm package (the dashboard JSON model Grafana's import takes), compiled
# by TypeScript with the dashboard as an object literal of that type, so a missing required
# field, a value of the wrong type or enum, and any property the schema does not know are all
# errors. (String enums are compared by value: Grafana reads JSON strings, not TS enums.) Then
# checks the check: two broken copies of the dashboard -- an unknown panel property and a
# string schemaVersion -- must fail it.
#
#   tools/check_dashboard_schema.sh DASHBOARD.json NPM_DIR
#
# NPM_DIR holds node_modules with typescript and @grafana/schema (scripts/install-deps.sh puts
# them in build/npm). Exit 0: conforms; 1: does not (tsc's errors printed); 77: skipped, the
# packages are not installed (ctest's SKIP_RETURN_CODE).
set -euo pipefail
dashboard=$1
npm_dir=$2
if [ ! -f "$npm_dir/node_modules/@grafana/schema/package.json" ] ||
   [ ! -x "$npm_dir/node_modules/.bin/tsc" ]; then
  echo "check_dashboard_schema: skipped: no typescript and @grafana/schema under $npm_dir" \
       "(scripts/install-deps.sh installs them from the npm registry)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$(cd "$npm_dir" && pwd)/node_modules" "$work/node_modules"
cat > "$work/tsconfig.json" <<'JSON'
{"compilerOptions": {"strict": true, "noEmit": true, "module": "nodenext",
 "moduleResolution": "nodenext", "target": "es2020", "skipLibCheck": true},
 "include": ["*.ts"]}
JSON
# One .ts file per dashboard JSON: `const dashboard: Literal<Dashboard> = <the JSON>;`.
typed() {  # json_file ts_file
  {
    echo "import type { Dashboard } from '@grafana/schema';"
    echo 'type Literal<T> = T extends string ? `${T}` : T extends object ? { [K in keyof T]: Literal<T[K]> } : T;'
    echo -n "export const dashboard: Literal<Dashboard> = "
    cat "$1"
    echo ";"
  } > "$2"
}
typed "$dashboard" "$work/dashboard.ts"
if ! (cd "$work" && node_modules/.bin/tsc -p tsconfig.json); then
  echo "check_dashboard_schema: $dashboard does not match @grafana/schema's Dashboard"
  exit 1
fi
version=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" \
          "$npm_dir/node_modules/@grafana/schema/package.json")
# The check must be able to fail: each broken copy alone.
rm "$work/dashboard.ts"
for breakage in unknown_panel_property string_schema_version; do
  python3 - "$dashboard" "$work/broken.json" "$breakage" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
if sys.argv[3] == "unknown_panel_property":
    d["panels"][0]["colour"] = "red"
else:
    d["schemaVersion"] = str(d["schemaVersion"])
json.dump(d, open(sys.argv[2], "w"), indent=2)
PY
  typed "$work/broken.json" "$work/broken.ts"
  if (cd "$work" && node_modules/.bin/tsc -p tsconfig.json > /dev/null); then
    echo "check_dashboard_schema: a dashboard with $breakage passed the check: it checks nothing"
    exit 1
  fi
done
echo "check_dashboard_schema: $dashboard matches @grafana/schema $version's Dashboard" \
     "(and both broken copies fail)"
