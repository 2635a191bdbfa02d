// CoreDNS with only the plugins the local real node's cluster DNS uses (tests/cluster/node.py
// writes its Corefile): Services and `<pod>.<subdomain>` records from the API server, cache,
// forwarding of other names to the host's resolver. Built by tests/cluster/build_node.sh from
// CoreDNS's Go module, as CoreDNS documents for a build with a chosen set of plugins; the
// order below is the order of those plugins in CoreDNS's own plugin.cfg.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "forward",
	}
}

func main() {
	coremain.Run()
}
