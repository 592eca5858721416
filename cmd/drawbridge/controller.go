//go:build !nocontroller

package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/internal/k8s"
)

// inClusterNamespaceFile holds the namespace of the pod the controller runs
// in, when it runs in a cluster.
const inClusterNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func newControllerCmd() *cobra.Command {
	var (
		kubeconfig     string
		apis           []string
		tokenFile      string
		caFile         string
		insecure       bool
		leaseNamespace string
		leaseName      string
		identity       string
		leaseDuration  time.Duration
		renewDeadline  time.Duration
		retryPeriod    time.Duration
		logLevel       string
		cfg            k8s.Config
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Serve Kubernetes Services of type LoadBalancer with drawbridge routes",
		Long: `Run in a Kubernetes cluster (a Deployment; see deploy/kubernetes/controller)
and serve every Service of type LoadBalancer whose spec.loadBalancerClass is
drawbridge.io/edge (--class) with drawbridge routes: one per TCP port, on the
Service's port (or the one the drawbridge.io/public-ports annotation names),
to the Ready nodes' InternalIP:NodePort (only nodes with a ready endpoint when
externalTrafficPolicy is Local). The Service's status gets the floating IP
that drawbridge reports (or --external-ip). Replicas elect one leader with a
Lease in --lease-namespace.

The API token comes from DRAWBRIDGE_API_TOKEN or --token-file; use a register
token limited to the controller's ports and the route name prefix (k8s.*).`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return &exitError{code: 2, err: fmt.Errorf("--log-level %q must be debug, info, warn or error", logLevel)}
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if err := cfg.Validate(); err != nil {
				return &exitError{code: 2, err: err}
			}
			if len(apis) == 0 {
				for a := range strings.SplitSeq(os.Getenv("DRAWBRIDGE_API_URLS"), ",") {
					if a = strings.TrimSpace(a); a != "" {
						apis = append(apis, a)
					}
				}
			}
			if len(apis) == 0 {
				return &exitError{code: 2, err: errors.New("no drawbridge node to talk to: give --api URL (repeat it for each node) or DRAWBRIDGE_API_URLS (comma-separated)")}
			}
			for _, a := range apis {
				u, err := url.Parse(a)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return &exitError{code: 2, err: fmt.Errorf("--api %q must be an http:// or https:// URL such as https://10.0.0.5:9000", a)}
				}
				if u.User != nil {
					return &exitError{code: 2, err: fmt.Errorf("--api %q must not carry credentials: the token comes from DRAWBRIDGE_API_TOKEN or --token-file", u.Redacted())}
				}
			}
			token, err := controllerToken(tokenFile)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			api, err := client.New(client.Config{
				Members: apis, Token: token, CAFile: caFile, InsecureSkipVerify: insecure,
				Timeout: 10 * time.Second, UserAgent: "drawbridge-controller/" + version,
				Logger: log.With("component", "drawbridge-api"),
			})
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			routes := k8s.APIRoutes{C: api}
			restCfg, err := kubeRESTConfig(kubeconfig)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			restCfg.UserAgent = "drawbridge-controller/" + version
			kube, err := k8s.NewClients(restCfg)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("kubernetes client: %w", err)}
			}
			if leaseNamespace == "" {
				leaseNamespace = podNamespace()
			}
			if identity == "" {
				identity = defaultIdentity()
			}
			c, err := k8s.New(cfg, kube, routes, log)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log.Info("starting", "version", version, "class", cfg.Class, "api", strings.Join(apis, ","),
				"lease", leaseNamespace+"/"+leaseName, "identity", identity)
			return c.RunWithLeaderElection(ctx, k8s.LeaderConfig{
				Namespace: leaseNamespace, Name: leaseName, Identity: identity,
				LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: the in-cluster configuration)")
	f.StringArrayVar(&apis, "api", nil, "drawbridge node API URL, such as https://10.0.0.5:9000; repeat for each node (failover in order; default: env DRAWBRIDGE_API_URLS, comma-separated)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the API token (default: env DRAWBRIDGE_API_TOKEN)")
	f.StringVar(&caFile, "ca-file", "", "CA certificate that verifies HTTPS drawbridge nodes")
	f.BoolVar(&insecure, "insecure-skip-verify", false, "do not verify the drawbridge nodes' TLS certificates")
	f.StringVar(&cfg.Class, "class", k8s.DefaultClass, "spec.loadBalancerClass of the Services to serve")
	f.BoolVar(&cfg.ClaimUnclassed, "claim-unclassed", false, "also serve LoadBalancer Services that name no class")
	f.StringVar(&cfg.ExternalIP, "external-ip", "", "address written into Service status (default: the floating IP drawbridge reports)")
	f.StringVar(&cfg.NamePrefix, "name-prefix", k8s.DefaultNamePrefix, "prefix of the routes this controller owns; routes with it that no Service wants are removed")
	f.DurationVar(&cfg.Resync, "resync", time.Minute, "how often every Service is compared with drawbridge again (repairs drift)")
	f.StringVar(&leaseNamespace, "lease-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace)")
	f.StringVar(&leaseName, "lease-name", "drawbridge-controller", "name of the leader-election Lease")
	f.StringVar(&identity, "identity", "", "this replica's name in the Lease (default: POD_NAME or the hostname, and a random suffix)")
	f.DurationVar(&leaseDuration, "lease-duration", 15*time.Second, "how long a Lease lasts without renewal")
	f.DurationVar(&renewDeadline, "renew-deadline", 10*time.Second, "how long the leader keeps trying to renew before it stops")
	f.DurationVar(&retryPeriod, "retry-period", 2*time.Second, "how often replicas try to take or renew the Lease")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// kubeRESTConfig loads the kubeconfig file, or the in-cluster configuration
// when none is named.
func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a cluster and no --kubeconfig: %w", err)
	}
	return c, nil
}

// podNamespace is the namespace the controller runs in, "default" outside
// a cluster.
func podNamespace() string {
	if ns := strings.TrimSpace(os.Getenv("POD_NAMESPACE")); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(inClusterNamespaceFile); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	return "default"
}

// defaultIdentity names this replica: the pod (or host) and a random
// suffix, so a restarted process never mistakes the old one's Lease for
// its own.
func defaultIdentity() string {
	name := strings.TrimSpace(os.Getenv("POD_NAME"))
	if name == "" {
		name, _ = os.Hostname()
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return name + "_" + hex.EncodeToString(b)
}

// controllerToken reads the API token from --token-file, else
// DRAWBRIDGE_API_TOKEN. There is no --token flag: it would show in ps.
func controllerToken(tokenFile string) (string, error) {
	token := strings.TrimSpace(os.Getenv("DRAWBRIDGE_API_TOKEN"))
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return "", errors.New("no API token: set DRAWBRIDGE_API_TOKEN or --token-file")
	}
	return token, nil
}
