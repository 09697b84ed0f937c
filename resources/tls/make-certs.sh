#!/bin/sh
# Makes a certificate set for `--tls-dir` with openssl (Debian's openssl package), in Cloud
# Hypervisor's file names, so the same directory works on both ends of a migration:
#   ca-cert.pem                       the CA both ends trust (its key, ca-key.pem, signs the rest)
#   server-cert.pem, server-key.pem   the destination's identity, naming every NAME given
#   client-cert.pem, client-key.pem   the source's identity
#
#   make-certs.sh DIR NAME...     NAME: the destination's host names or IP addresses, as the
#                                 source writes them in `--to tcp:NAME:PORT`
# In production keep ca-key.pem off the hosts and give each host only what its role needs.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR NAME..." >&2; exit 2; }
dir=$1; shift
mkdir -p "$dir"
cd "$dir"
umask 077
san=""
for n in "$@"; do
  case $n in
    *:*|*[!0-9.]*) case $n in *:*) e="IP:$n" ;; *) e="DNS:$n" ;; esac ;;
    *) e="IP:$n" ;;
  esac
  san="${san:+$san,}$e"
done
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca-cert.pem -days 3650 -subj "/CN=vmm migration CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
sign() { # NAME CN EXTENSIONS
  key "$1-key.pem"
  openssl req -new -key "$1-key.pem" -out "$1.csr" -subj "/CN=$2"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out "$1-cert.pem" -days 825 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
sign server "$1" "subjectAltName=$san
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth"
sign client "vmm migration source" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca-cert.srl
echo "make-certs: $dir: ca-cert.pem server-cert.pem server-key.pem client-cert.pem client-key.pem (server names: $san)" >&2
