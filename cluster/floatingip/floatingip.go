package floatingip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Provider names accepted in [Config.Provider].
const (
	ProviderDigitalOcean = "digitalocean"
	ProviderVIP          = "vip"
	ProviderExec         = "exec"
	ProviderNone         = "none"
)

// Provider moves the floating IP. Implementations must be safe for use by one
// owner loop goroutine (calls are serialized by the caller) and idempotent.
type Provider interface {
	// Name returns the provider name, as configured ("vip", "exec", ...).
	Name() string
	// Claim makes this node hold the address; returns when the move is done
	// (or ctx ends). Claiming an address already held is a fast no-op.
	Claim(ctx context.Context) error
	// Release gives the address up when this node holds it (graceful stop,
	// unhealthy). Releasing what we don't hold is a no-op.
	Release(ctx context.Context) error
	// Held reports whether this node holds the address according to the
	// provider's source of truth (cloud API, local interface), as far as it
	// can tell cheaply.
	Held(ctx context.Context) (bool, error)
}

// HolderReporter is implemented by providers that can tell who holds the
// address right now, so the owner loop can look before it claims and never
// take the address from a healthy holder. The digitalocean provider
// implements it; get at it with a type assertion:
//
//	if hr, ok := p.(floatingip.HolderReporter); ok { id, err := hr.Holder(ctx) }
type HolderReporter interface {
	// Holder returns the cloud identifier of the machine that holds the
	// address (a droplet id for digitalocean), 0 when nobody holds it.
	Holder(ctx context.Context) (int, error)
	// Self returns the identifier of this machine in the same terms.
	Self() int
}

// Announcer is implemented by providers whose network learns the holder
// from the holder's own announcements (vip: gratuitous ARP) rather than from
// a central API. The owner loop calls Announce about once a second while it
// holds the address: if another node claimed it for a moment (a flapping
// link shows it a holder as dead) and then let go, the hosts and switches
// that heard that node's announcement would keep sending to it until their
// ARP entries age out, tens of seconds later. The next announcement brings
// them back within a second.
type Announcer interface {
	// Announce tells the network again that this node holds the address.
	// It does nothing when the address is not held here.
	Announce(ctx context.Context) error
}

// ErrReservedIPNotFound is wrapped by the digitalocean provider when the API
// answers 404 for the reserved IP: it does not exist in the account the token
// belongs to (wrong address, wrong account, or a token of another team).
var ErrReservedIPNotFound = errors.New("reserved IP not found in this account")

// Defaults applied by [New] to zero fields of [Config].
const (
	DefaultExecTimeout     = 10 * time.Second
	DefaultExecRetries     = 3
	DefaultVIPPrefixLen    = 32
	DefaultDOMetadataURL   = "http://169.254.169.254/metadata/v1/id"
	defaultMetadataTimeout = 2 * time.Second
)

// Config selects and configures a provider. It is filled from the
// viper-decoded `floating_ip` section in cmd and kept plain on purpose.
// Logging a Config with slog redacts DOToken (see [Config.LogValue]).
type Config struct {
	// Provider is "digitalocean", "vip", "exec" or "none" ("" means none).
	Provider string
	// Address is the floating IP (IPv4 for digitalocean and vip).
	Address string
	// NodeName is this node's name; passed to the exec script.
	NodeName string

	// Interface is the vip interface to add the address to. Empty means the
	// interface of the IPv4 default route; New fails when there is none.
	Interface string
	// PrefixLen is the vip prefix length (default 32).
	PrefixLen int

	// ExecCommand is the exec script path, called as
	// `SCRIPT claim|release IP NODE`, without a shell.
	ExecCommand string
	// ExecTimeout bounds one run of the script (default 10s).
	ExecTimeout time.Duration
	// ExecRetries is how many times a failed run is retried, so a call makes
	// at most 1+ExecRetries runs (default 3; negative is an error).
	ExecRetries int

	// DOTokenFile is a file holding the DigitalOcean API token.
	DOTokenFile string
	// DOToken is the token itself (cmd fills it from DIGITALOCEAN_TOKEN).
	// Set one of DOTokenFile and DOToken. It never reaches a log line.
	DOToken string
	// DODropletID is this droplet's id; 0 asks the metadata service.
	DODropletID int
	// DOAPIURL overrides the API base URL (tests point it at a fake).
	DOAPIURL string
	// DOMetadataURL overrides the metadata URL that answers the droplet id
	// (default http://169.254.169.254/metadata/v1/id).
	DOMetadataURL string

	// Logger receives the provider's logs; nil discards them.
	Logger *slog.Logger
}

// LogValue implements slog.LogValuer so that a logged Config never shows the
// API token.
func (c Config) LogValue() slog.Value {
	token := ""
	if c.DOToken != "" {
		token = "REDACTED"
	}
	return slog.GroupValue(
		slog.String("provider", c.Provider),
		slog.String("address", c.Address),
		slog.String("node", c.NodeName),
		slog.String("interface", c.Interface),
		slog.Int("prefix_len", c.PrefixLen),
		slog.String("exec_command", c.ExecCommand),
		slog.Duration("exec_timeout", c.ExecTimeout),
		slog.Int("exec_retries", c.ExecRetries),
		slog.String("do_token_file", c.DOTokenFile),
		slog.String("do_token", token),
		slog.Int("do_droplet_id", c.DODropletID),
		slog.String("do_api_url", c.DOAPIURL),
		slog.String("do_metadata_url", c.DOMetadataURL),
	)
}

// String redacts the token too, for %v and %+v.
func (c Config) String() string {
	return c.LogValue().String()
}

// New validates cfg, applies defaults and builds the provider it names. The
// digitalocean provider reads the token file and, when DODropletID is 0,
// asks the metadata service (2 s timeout) here, so a misconfiguration shows
// at startup. The vip provider resolves the default-route interface here.
func New(cfg Config) (Provider, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := strings.ToLower(strings.TrimSpace(cfg.Provider))
	if name == "" {
		name = ProviderNone
	}
	log = log.With("component", "floatingip", "provider", name)
	cfg.Logger = log

	switch name {
	case ProviderNone:
		return None{}, nil
	case ProviderVIP:
		addr, err := parseIPv4(cfg.Address, name)
		if err != nil {
			return nil, err
		}
		if cfg.PrefixLen == 0 {
			cfg.PrefixLen = DefaultVIPPrefixLen
		}
		if cfg.PrefixLen < 1 || cfg.PrefixLen > 32 {
			return nil, fmt.Errorf("floating_ip: vip prefix length %d out of range 1..32", cfg.PrefixLen)
		}
		v, err := newVIP(cfg, addr, vipDeps{})
		if err != nil {
			return nil, err
		}
		return v, nil
	case ProviderExec:
		e, err := newExec(cfg)
		if err != nil {
			return nil, err
		}
		return e, nil
	case ProviderDigitalOcean:
		addr, err := parseIPv4(cfg.Address, name)
		if err != nil {
			return nil, err
		}
		d, err := newDigitalOcean(cfg, addr, doDeps{})
		if err != nil {
			return nil, err
		}
		return d, nil
	default:
		return nil, fmt.Errorf("floating_ip: unknown provider %q (want %s, %s, %s or %s)",
			cfg.Provider, ProviderDigitalOcean, ProviderVIP, ProviderExec, ProviderNone)
	}
}

// parseIPv4 checks that s is a plain IPv4 address, as the vip and
// digitalocean providers need.
func parseIPv4(s, provider string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, fmt.Errorf("floating_ip: address is required for the %s provider", provider)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("floating_ip: address %q: %w", s, err)
	}
	a = a.Unmap()
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("floating_ip: address %q: the %s provider needs an IPv4 address", s, provider)
	}
	return a, nil
}

// None is the "none" provider: drawbridge does not manage a floating IP.
// Claim and Release do nothing and Held is always false.
type None struct{}

var _ Provider = None{}

// Name returns "none".
func (None) Name() string { return ProviderNone }

// Claim does nothing.
func (None) Claim(context.Context) error { return nil }

// Release does nothing.
func (None) Release(context.Context) error { return nil }

// Held always reports false.
func (None) Held(context.Context) (bool, error) { return false, nil }

// sleepCtx waits d or until ctx ends, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
