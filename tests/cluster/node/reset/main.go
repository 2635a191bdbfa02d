// node-reset stops and removes every pod sandbox of a CRI runtime (with its containers, its
// network namespace and its CNI attachment), so that stopping the local real node
// (tests/cluster/node.py) leaves no container, mount or veth behind. crictl would do the same
// (`crictl rmp -af`); this is the few lines of it that the node needs, built from the module
// the kubelet is built from.
//
//	node-reset -endpoint /path/to/containerd.sock
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "the CRI runtime's unix socket")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()
	if *endpoint == "" {
		fmt.Fprintln(os.Stderr, "node-reset: -endpoint is required")
		os.Exit(2)
	}
	conn, err := grpc.NewClient("unix://"+*endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "node-reset: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	runtime := runtimeapi.NewRuntimeServiceClient(conn)
	sandboxes, err := runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "node-reset: listing pod sandboxes: %v\n", err)
		os.Exit(1)
	}
	failed := false
	for _, sandbox := range sandboxes.Items {
		name := sandbox.Metadata.Namespace + "/" + sandbox.Metadata.Name
		if _, err := runtime.StopPodSandbox(ctx,
			&runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "node-reset: stopping %s: %v\n", name, err)
			failed = true
			continue
		}
		if _, err := runtime.RemovePodSandbox(ctx,
			&runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			fmt.Fprintf(os.Stderr, "node-reset: removing %s: %v\n", name, err)
			failed = true
			continue
		}
		fmt.Printf("removed pod sandbox %s (%s)\n", name, sandbox.Id[:12])
	}
	if failed {
		os.Exit(1)
	}
}
