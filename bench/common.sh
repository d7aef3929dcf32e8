# Shared by the bench scripts (sourced, not run): a release dev server started and stopped in a
# temporary directory. The caller sets `dir` (a scratch directory it removes) and `target`.

pid=

# start_server NAME CONFIG-TEXT: writes the config to $dir/sovra-NAME.toml, starts the server on
# $dir/data-NAME with the server's own environment plus $SERVER_ENV, and waits for its dev.env,
# which it leaves in $env_file. Uses $SERVER if set, else the release build.
start_server() {
    local data="$dir/data-$1"
    printf '%s\n' "$2" > "$dir/sovra-$1.toml"
    SOVRA_LOG=warn env ${SERVER_ENV:-} "${SERVER:-$target/release/sovra}" server --dev --data-dir "$data" \
        --config "$dir/sovra-$1.toml" > "$dir/server-$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do [ -f "$data/dev.env" ] && break; sleep 0.1; done
    [ -f "$data/dev.env" ] || { cat "$dir/server-$1.log"; exit 1; }
    env_file="$data/dev.env"
    # The bench identity provider's org (nothing creates an org implicitly); a server from
    # before organizations were records has no `org` command and needs none.
    (set -a; . "$env_file"; set +a; "${SERVER:-$target/release/sovra}" org create bench) \
        > /dev/null 2>&1 || true
}

# Stops the server started last, if any.
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}

# The config lines that make the bench identity provider in $dir/idp an issuer of the server.
idp_config() {
    printf '[[auth.jwt]]\nissuer = "https://bench-idp.sovra.test"\naudience = "sovra"\njwks = "%s"\n' "$dir/idp/jwks.json"
    # Its subjects become identities on first use; a server from before identities were
    # records (`SERVER=` an older build) knows no such setting and needs none.
    if "${SERVER:-$target/release/sovra}" org --help > /dev/null 2>&1; then
        printf 'provision_identities = true\n'
    fi
}
