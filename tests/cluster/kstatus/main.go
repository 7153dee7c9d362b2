// kstatus reads one Kubernetes object as JSON on stdin and prints what
// cli-utils' kstatus (the library Flux and kpt use) computes of it:
// the status (InProgress, Current, Failed, …), a tab, then the message.
package main

import (
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	// Kubernetes' own decoder: integers stay int64, as kstatus expects.
	var object map[string]interface{}
	if err := json.Unmarshal(data, &object); err != nil {
		fail(fmt.Errorf("stdin is not a JSON object: %w", err))
	}
	result, err := status.Compute(&unstructured.Unstructured{Object: object})
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s\t%s\n", result.Status, result.Message)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
