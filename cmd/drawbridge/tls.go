package main

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/drawbridge-lb/drawbridge/internal/pki"
)

// newTLSCmd is `drawbridge tls`: the cluster CA and node certificates, in
// the shape of `consul tls ca create` and `consul tls cert create`.
func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster CA and node certificates (raft mutual TLS, HTTPS API)",
		Long: `A drawbridge cluster trusts one CA. Each node holds a certificate from it
whose common name is the node's name: raft accepts a node only under the name
its certificate proves, and followers forward writes only to an API that
proves the leader's name.

    drawbridge tls ca create --dir /etc/drawbridge/tls
    drawbridge tls cert create --ca-dir /etc/drawbridge/tls --node edge-1 --ip 10.0.0.5

Keep ca-key.pem off the nodes; copy ca.pem and each node's pair to it.`,
	}
	cmd.AddCommand(newTLSCACmd(), newTLSCertCmd())
	return cmd
}

func newTLSCACmd() *cobra.Command {
	ca := &cobra.Command{Use: "ca", Short: "Manage the cluster CA"}
	var dir, name string
	var days int
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a new cluster CA (ca.pem, ca-key.pem; mode 0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certFile, keyFile, err := pki.CreateCA(dir, pki.CAOptions{CommonName: name, Days: days})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created the cluster CA:\n  %s (certificate, copy to every node)\n  %s (key, keep it off the nodes)\n", certFile, keyFile)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&dir, "dir", ".", "directory to write the CA into")
	f.StringVar(&name, "common-name", "", "the CA's common name (default \"drawbridge cluster CA\")")
	f.IntVar(&days, "days", pki.DefaultCADays, "days the CA is valid")
	ca.AddCommand(create)
	return ca
}

func newTLSCertCmd() *cobra.Command {
	cert := &cobra.Command{Use: "cert", Short: "Manage node certificates"}
	var caDir, outDir, node string
	var ips, dns []string
	var days int
	create := &cobra.Command{
		Use:   "create --node NAME [--ip IP]... [--dns NAME]...",
		Short: "Create a node certificate signed by the cluster CA (NAME.pem, NAME-key.pem; mode 0600)",
		Long: `create signs a certificate for one node. Its common name is the node name
(the agent's node_name): that is the identity raft and forwarding check. Add
the addresses clients reach the node's HTTPS API at with --ip and --dns
(127.0.0.1 and localhost are always included). The certificate serves raft
mutual TLS and the API alike.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if node == "" {
				return &exitError{code: 2, err: fmt.Errorf("--node is required")}
			}
			var parsed []net.IP
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return &exitError{code: 2, err: fmt.Errorf("--ip %q is not an IP address", s)}
				}
				parsed = append(parsed, ip)
			}
			if outDir == "" {
				outDir = caDir
			}
			certFile, keyFile, err := pki.CreateNodeCert(caDir, outDir, pki.CertOptions{Node: node, IPs: parsed, DNSNames: dns, Days: days})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created the certificate of node %s:\n  %s\n  %s\n", node, certFile, keyFile)
			return nil
		},
	}
	f := create.Flags()
	f.StringVar(&caDir, "ca-dir", ".", "directory holding ca.pem and ca-key.pem")
	f.StringVar(&outDir, "out-dir", "", "directory to write the certificate into (default: --ca-dir)")
	f.StringVar(&node, "node", "", "node name: the certificate's identity")
	f.StringArrayVar(&ips, "ip", nil, "IP address the node's API is reached at (repeatable)")
	f.StringArrayVar(&dns, "dns", nil, "DNS name the node's API is reached at (repeatable)")
	f.IntVar(&days, "days", pki.DefaultCertDays, "days the certificate is valid")
	cert.AddCommand(create)
	return cert
}
