// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 so that
// tests/cluster/build.sh can build it through the Go module proxy at the
// version Kubernetes itself is tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
