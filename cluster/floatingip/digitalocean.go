package floatingip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/oauth2"
)

// Timings of the digitalocean provider. The fields of [DigitalOcean] start
// from these; tests shorten them.
const (
	// doRequestTimeout bounds one API request.
	doRequestTimeout = 10 * time.Second
	// doClaimTimeout bounds a whole Claim: look, assign (with retries) and
	// poll the action to completion.
	doClaimTimeout = 60 * time.Second
	// doPollInterval is the wait between two polls of an assign action.
	// Assignments usually complete in a few seconds; a failover waits for
	// it, so poll briskly (well inside DigitalOcean's 250 requests/minute).
	doPollInterval = 250 * time.Millisecond
	// doBackoffMin and doBackoffMax bound the exponential backoff after a
	// 422 "pending event", a 5xx or a network error.
	doBackoffMin = 250 * time.Millisecond
	doBackoffMax = 4 * time.Second
	// doActionErrored is the status of a failed action (godo has constants
	// for in-progress and completed only).
	doActionErrored = "errored"
)

// DigitalOcean is the "digitalocean" provider: it assigns a reserved IP to
// this droplet through the DigitalOcean API and polls the action until it
// completes.
//
// Claim first looks at the current assignment (one GET) and does nothing
// when the IP is already ours; otherwise it sends one assign request, which
// moves the IP directly from whichever droplet holds it, and polls the
// action. A 422 "pending event" (another action on the IP or the droplet is
// in progress), a 429 (waiting as long as Retry-After or RateLimit-Reset
// say), a 5xx or a network error is retried with backoff, looking at the
// assignment again before every new assign; a 404 wraps
// [ErrReservedIPNotFound]. The whole Claim is bounded (60 s) as well as by
// the caller's context.
//
// Release is a no-op by design. A reserved IP cannot be given up other than
// by unassigning it, which takes about as long as an assign and leaves the
// IP pointing nowhere until the peer assigns it. The peer's direct assign
// takes it from us in one step, so a node that stops gracefully simply stops
// holding the IP as far as the owner loop is concerned and lets the peer
// claim at once. Held keeps reporting the truth (the IP is still assigned
// to this droplet until the peer's assign completes).
//
// Held and Holder make one GET, without retries. The API token is never
// logged; it only travels in the Authorization header.
type DigitalOcean struct {
	client    *godo.Client
	addr      string
	dropletID int
	log       *slog.Logger

	claimTimeout time.Duration
	pollInterval time.Duration
	backoffMin   time.Duration
	backoffMax   time.Duration
	maxRateWait  time.Duration // longest wait honoured for a 429
}

var (
	_ Provider       = (*DigitalOcean)(nil)
	_ HolderReporter = (*DigitalOcean)(nil)
)

// doDeps lets tests replace the HTTP transport under the token source.
type doDeps struct {
	transport http.RoundTripper
}

func newDigitalOcean(cfg Config, addr netip.Addr, deps doDeps) (*DigitalOcean, error) {
	token, err := doToken(cfg)
	if err != nil {
		return nil, err
	}
	base := deps.transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	hc := &http.Client{
		Timeout: doRequestTimeout,
		Transport: &oauth2.Transport{
			Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token}),
			Base:   base,
		},
	}
	opts := []godo.ClientOpt{godo.SetUserAgent("drawbridge")}
	if cfg.DOAPIURL != "" {
		u := cfg.DOAPIURL
		if !strings.HasSuffix(u, "/") {
			u += "/"
		}
		opts = append(opts, godo.SetBaseURL(u))
	}
	// No godo retry config: this provider does its own retries, so that it
	// can tell a pending event from a real failure and bound the total time.
	client, err := godo.New(hc, opts...)
	if err != nil {
		return nil, fmt.Errorf("floating_ip: digitalocean client: %w", err)
	}

	id := cfg.DODropletID
	if id < 0 {
		return nil, fmt.Errorf("floating_ip: digitalocean droplet id %d is negative", id)
	}
	if id == 0 {
		murl := cfg.DOMetadataURL
		if murl == "" {
			murl = DefaultDOMetadataURL
		}
		ctx, cancel := context.WithTimeout(context.Background(), defaultMetadataTimeout)
		defer cancel()
		id, err = dropletIDFromMetadata(ctx, murl, deps.transport)
		if err != nil {
			return nil, fmt.Errorf("floating_ip: droplet id from the metadata service %s: %w "+
				"(not on a droplet? set floating_ip.digitalocean.droplet_id)", murl, err)
		}
	}
	d := &DigitalOcean{
		client:       client,
		addr:         addr.String(),
		dropletID:    id,
		log:          cfg.Logger.With("reserved_ip", addr.String(), "droplet", id),
		claimTimeout: doClaimTimeout,
		pollInterval: doPollInterval,
		backoffMin:   doBackoffMin,
		backoffMax:   doBackoffMax,
		maxRateWait:  doClaimTimeout,
	}
	return d, nil
}

// doToken returns the API token from the config or its file. Errors name the
// file, never the content.
func doToken(cfg Config) (string, error) {
	switch {
	case cfg.DOToken != "" && cfg.DOTokenFile != "":
		return "", errors.New("floating_ip: set only one of the digitalocean token and token file")
	case cfg.DOTokenFile != "":
		b, err := os.ReadFile(cfg.DOTokenFile)
		if err != nil {
			return "", fmt.Errorf("floating_ip: digitalocean token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("floating_ip: digitalocean token file %s is empty", cfg.DOTokenFile)
		}
		return tok, nil
	case strings.TrimSpace(cfg.DOToken) != "":
		return strings.TrimSpace(cfg.DOToken), nil
	default:
		return "", errors.New("floating_ip: the digitalocean provider needs an API token " +
			"(floating_ip.digitalocean.token_file or DIGITALOCEAN_TOKEN)")
	}
}

// dropletIDFromMetadata asks the droplet metadata service for this droplet's
// id. transport may be nil.
func dropletIDFromMetadata(ctx context.Context, url string, transport http.RoundTripper) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if transport == nil {
		// The link-local metadata service must never go through a proxy
		// that HTTP_PROXY may name.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		transport = t
	}
	hc := &http.Client{Transport: transport}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	id, err := strconv.Atoi(strings.TrimSpace(string(body)))
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("unexpected answer %q", strings.TrimSpace(string(body)))
	}
	return id, nil
}

// Name returns "digitalocean".
func (d *DigitalOcean) Name() string { return ProviderDigitalOcean }

// Self returns this droplet's id.
func (d *DigitalOcean) Self() int { return d.dropletID }

// Holder returns the id of the droplet the reserved IP is assigned to, 0
// when it is unassigned. It makes one GET.
func (d *DigitalOcean) Holder(ctx context.Context) (int, error) {
	ip, _, err := d.client.ReservedIPs.Get(ctx, d.addr)
	if err != nil {
		return 0, d.apiError("get reserved IP", err)
	}
	return holderOf(ip), nil
}

// Held reports whether the reserved IP is assigned to this droplet.
func (d *DigitalOcean) Held(ctx context.Context) (bool, error) {
	id, err := d.Holder(ctx)
	if err != nil {
		return false, err
	}
	return id == d.dropletID, nil
}

// Release does nothing: see [DigitalOcean] for why the IP is left assigned
// until the peer's assign moves it.
func (d *DigitalOcean) Release(context.Context) error { return nil }

// Claim assigns the reserved IP to this droplet and waits for the action to
// complete. It returns at once when the IP is already assigned here.
func (d *DigitalOcean) Claim(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.claimTimeout)
	defer cancel()
	start := time.Now()

	b := d.newBackoff()
	for {
		ip, resp, err := d.client.ReservedIPs.Get(ctx, d.addr)
		if err != nil {
			if werr := d.retryWait(ctx, "get reserved IP", resp, err, b); werr != nil {
				return werr
			}
			continue
		}
		holder := holderOf(ip)
		if holder == d.dropletID {
			d.log.Debug("reserved IP already assigned to this droplet")
			return nil
		}

		d.log.Info("assigning reserved IP", "from_droplet", holder)
		action, resp, err := d.client.ReservedIPActions.Assign(ctx, d.addr, d.dropletID)
		if err != nil {
			if werr := d.retryWait(ctx, "assign reserved IP", resp, err, b); werr != nil {
				return werr
			}
			continue // look again: a pending event may have been ours
		}
		if action == nil {
			return errors.New("digitalocean: assign reserved IP: empty action in the answer")
		}
		if err := d.waitAction(ctx, action, b); err != nil {
			return err
		}
		d.log.Info("reserved IP assigned", "from_droplet", holder, "action", action.ID,
			"duration", time.Since(start).Round(time.Millisecond))
		return nil
	}
}

// waitAction polls action until it completes or errors.
func (d *DigitalOcean) waitAction(ctx context.Context, action *godo.Action, b *backoff) error {
	for {
		switch action.Status {
		case godo.ActionCompleted:
			return nil
		case doActionErrored:
			return fmt.Errorf("digitalocean: assign reserved IP %s to droplet %d: action %d errored",
				d.addr, d.dropletID, action.ID)
		}
		if err := sleepCtx(ctx, d.pollInterval); err != nil {
			return fmt.Errorf("digitalocean: assign reserved IP %s: action %d still %s: %w (claims are bounded at %s)",
				d.addr, action.ID, action.Status, err, d.claimTimeout)
		}
		next, resp, err := d.client.ReservedIPActions.Get(ctx, d.addr, action.ID)
		if err != nil {
			if werr := d.retryWait(ctx, "poll assign action", resp, err, b); werr != nil {
				return werr
			}
			continue
		}
		if next == nil {
			return fmt.Errorf("digitalocean: poll assign action %d: empty answer", action.ID)
		}
		action = next
		d.log.Debug("assign action", "action", action.ID, "status", action.Status)
	}
}

// retryWait decides whether err, from op, is worth retrying. When it is, it
// waits (backoff, or what a 429 asks for) and returns nil; otherwise it
// returns the error to give the caller.
func (d *DigitalOcean) retryWait(ctx context.Context, op string, resp *godo.Response, err error, b *backoff) error {
	if ctx.Err() != nil {
		if b.last != nil {
			return fmt.Errorf("digitalocean: %s %s: %w (last retried error: %w)", op, d.addr, ctx.Err(), b.last)
		}
		return fmt.Errorf("digitalocean: %s %s: %w", op, d.addr, ctx.Err())
	}
	status := 0
	if resp != nil && resp.Response != nil {
		status = resp.StatusCode
	}
	var wait time.Duration
	switch {
	case status == http.StatusNotFound:
		return fmt.Errorf("digitalocean: %s %s: %w", op, d.addr, ErrReservedIPNotFound)
	case status == http.StatusTooManyRequests:
		wait = rateLimitWait(resp, time.Now())
		if wait <= 0 {
			wait = b.next()
		}
		if wait > d.maxRateWait {
			return fmt.Errorf("digitalocean: %s %s: rate limited for %s: %w", op, d.addr, wait.Round(time.Second), err)
		}
	case status == http.StatusUnprocessableEntity && isPendingEvent(err):
		wait = b.next()
	case status >= 500:
		wait = b.next()
	case status == 0 && isNetworkError(err):
		wait = b.next()
	default:
		return d.apiError(op, err)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		return fmt.Errorf("digitalocean: %s %s: giving up, no time left to retry: %w", op, d.addr, err)
	}
	b.last = err
	d.log.Warn("reserved IP request failed, retrying", "op", op, "status", status,
		"retry_in", wait.Round(time.Millisecond), "err", err)
	if serr := sleepCtx(ctx, wait); serr != nil {
		return fmt.Errorf("digitalocean: %s %s: %w (last error: %w)", op, d.addr, serr, err)
	}
	return nil
}

// apiError wraps a non-retried API error, turning a 404 into
// ErrReservedIPNotFound.
func (d *DigitalOcean) apiError(op string, err error) error {
	var er *godo.ErrorResponse
	if errors.As(err, &er) && er.Response != nil && er.Response.StatusCode == http.StatusNotFound {
		return fmt.Errorf("digitalocean: %s %s: %w", op, d.addr, ErrReservedIPNotFound)
	}
	return fmt.Errorf("digitalocean: %s %s: %w", op, d.addr, err)
}

// holderOf returns the droplet id a reserved IP is assigned to, 0 if none.
func holderOf(ip *godo.ReservedIP) int {
	if ip == nil || ip.Droplet == nil {
		return 0
	}
	return ip.Droplet.ID
}

// isPendingEvent tells a 422 "... already has a pending event" (worth
// retrying) from other 422s, such as a droplet in another region (not).
func isPendingEvent(err error) bool {
	var er *godo.ErrorResponse
	if !errors.As(err, &er) {
		return false
	}
	return strings.Contains(strings.ToLower(er.Message), "pending")
}

// isNetworkError reports errors that never reached an HTTP answer.
func isNetworkError(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// rateLimitWait returns how long a 429 answer asks to wait: Retry-After
// (seconds or an HTTP date), else RateLimit-Reset when no request is left;
// 0 when it says nothing.
func rateLimitWait(resp *godo.Response, now time.Time) time.Duration {
	if resp == nil || resp.Response == nil {
		return 0
	}
	if ra := strings.TrimSpace(resp.Header.Get("Retry-After")); ra != "" {
		if secs, err := strconv.Atoi(ra); err == nil && secs >= 0 {
			return time.Duration(secs) * time.Second
		}
		if t, err := http.ParseTime(ra); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	if resp.Rate.Remaining == 0 && !resp.Rate.Reset.IsZero() {
		return max(resp.Rate.Reset.Sub(now), 0)
	}
	return 0
}

// backoff is a capped exponential backoff with jitter in the upper half. It
// also remembers the last error it was used for, so that a Claim that runs
// out of time can say what kept failing.
type backoff struct {
	cur, max time.Duration
	last     error
}

func (d *DigitalOcean) newBackoff() *backoff {
	return &backoff{cur: d.backoffMin, max: d.backoffMax}
}

// next returns the next wait, between half and all of the current step, and
// doubles the step up to the cap.
func (b *backoff) next() time.Duration {
	w := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.max)
	return w
}
