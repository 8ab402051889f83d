#!/usr/bin/env bash
# Generates a local CA and a server certificate signed by it, for trying click-gateway over
# HTTPS on this machine. Nothing here is for production: use a real certificate (Let's
# Encrypt, see the README) there.
#
#   certs/generate.sh [NAME ...]        default names: localhost 127.0.0.1
#
# Writes into certs/: ca.pem (trust this one in curl with --cacert), ca.key, server.pem (the
# chain: server certificate then CA), server.key. Private keys are created mode 0600 and are
# ignored by git (*.key, *.pem in .gitignore): never commit them.
set -euo pipefail
cd "$(dirname "$0")"
command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
san=""
for n in "${names[@]}"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

umask 077
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=click-gateway local test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out server.key.tmp
# PKCS#8, the most widely understood key format.
openssl pkcs8 -topk8 -nocrypt -in server.key.tmp -out server.key
rm -f server.key.tmp
openssl req -new -key server.key -subj "/CN=${names[0]}" -out server.csr
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 30 \
    -extfile server.ext -out server.crt
cat server.crt ca.pem > server.pem
rm -f server.csr server.ext server.crt ca.srl
chmod 0644 ca.pem server.pem
echo "certs/server.pem (names: ${names[*]}), certs/server.key; trust certs/ca.pem"
