// compose-check loads a Compose file with compose-go v2, the library `docker compose` v2
// itself uses to read one: the current Compose Specification's JSON Schema (unknown keys,
// wrong types and values are errors), interpolation, and the consistency checks (services
// that depend on, or share volumes and networks with, what does not exist). It prints the
// normalised project as JSON, or the error and exits 1.
//
//	compose-check deploy/compose/compose.yaml
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions([]string{os.Args[1]},
		cli.WithConsistency(true), cli.WithInterpolation(true), cli.WithNormalization(true),
		cli.WithResolvedPaths(true), cli.WithName("slipguard"))
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(append(out, '\n'))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "compose-check:", err)
	os.Exit(1)
}
