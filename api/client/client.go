// Package client is a Go client of drawbridge's HTTP API, for programs that
// manage routes (the CLI, the Kubernetes controller) and for the sidecar
// that keeps one backend registered (Registrar).
//
// A Client knows every member of the cluster. Each request goes first to the
// member that answered last; a member that cannot be reached, or answers
// 5xx, 408 or 429, passes the request to the next one, and any other answer
// (2xx, or a refusal such as 401, 404 or 409) ends it. Any node accepts
// writes (followers forward them to the leader), so failing over needs no
// leader discovery. Retrying after every member failed, with backoff, is
// the caller's choice: Registrar does it.
//
// Writes are cheapest on the leader: a follower forwards them, which costs
// the cluster a second request. Every answer to a write names the node
// that answered and the leader it knows of (api.NodeHeader,
// api.LeaderHeader); the Client learns which member is which node and
// sends its next requests to the leader's member, or, while it has not
// heard from that member yet, to a member it has not heard from. It only
// ever follows these names among its configured members: an answer cannot
// send it anywhere else.
//
// The token is sent as "Authorization: Bearer" on every request and never
// logged or put in an error.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/internal/tlsutil"
)

// DefaultTimeout bounds one request to one member when Config.Timeout is
// zero, so a member that accepts connections but never answers is failed
// over.
const DefaultTimeout = 10 * time.Second

// maxAnswerBytes bounds an answer read into memory (a snapshot is the
// largest; the API bounds it well below this).
const maxAnswerBytes = 64 << 20

// Config configures a Client.
type Config struct {
	// Members are base URLs of drawbridge nodes ("https://edge-1:9000"),
	// tried in order. A member without a scheme is http://; a trailing
	// slash is dropped. At least one is required.
	Members []string
	// Token authenticates every request. Required; never logged.
	Token string
	// CAFile verifies HTTPS members (default: the system roots).
	CAFile string
	// InsecureSkipVerify does not verify members' certificates: an
	// operator's explicit choice for labs, never a default.
	InsecureSkipVerify bool
	// Timeout bounds one request to one member (default DefaultTimeout).
	Timeout time.Duration
	// UserAgent is sent with every request (default "drawbridge-client").
	UserAgent string
	// HTTPClient, when set, carries the requests instead of a client built
	// from CAFile, InsecureSkipVerify and Timeout.
	HTTPClient *http.Client
	// Logger receives failover messages ("switched member" at info,
	// "member failed" at debug); nil discards them.
	Logger *slog.Logger
}

// Client talks to a drawbridge cluster. It is safe for concurrent use.
type Client struct {
	members []string
	token   string
	ua      string
	http    *http.Client
	log     *slog.Logger

	mu     sync.Mutex
	member int // index of the member the next request goes to first
	// names are the node names members answered with ("" until one
	// did); asked is when the Client last asked a member it knew no name
	// for, so a member that never answers is not asked again on every
	// request (see follow).
	names []string
	asked []time.Time
}

// reexplore is how long a member that gave no name is left alone before
// the Client asks it again to find the leader.
const reexplore = 5 * time.Minute

// New checks cfg and returns a Client. It contacts nobody.
func New(cfg Config) (*Client, error) {
	if len(cfg.Members) == 0 {
		return nil, errors.New("client: no members")
	}
	if cfg.Token == "" {
		return nil, errors.New("client: no token")
	}
	members := make([]string, len(cfg.Members))
	for i, m := range cfg.Members {
		base, err := MemberURL(m)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		members[i] = base
	}
	hc := cfg.HTTPClient
	if hc == nil {
		timeout := cfg.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		tc, err := tlsutil.ClientConfig(cfg.CAFile, cfg.InsecureSkipVerify)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if tc != nil {
			tr.TLSClientConfig = tc
		}
		hc = &http.Client{Timeout: timeout, Transport: tr}
	}
	ua := cfg.UserAgent
	if ua == "" {
		ua = "drawbridge-client"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Client{members: members, token: cfg.Token, ua: ua, http: hc, log: logger,
		names: make([]string, len(members)), asked: make([]time.Time, len(members))}, nil
}

// MemberURL checks a member's base URL and returns it canonical: a scheme
// (http:// when none is given), a host, no trailing slash, no query.
func MemberURL(s string) (string, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "/")
	if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("member %q is not a base URL like https://edge-1.example.com:9000", s)
	}
	return s, nil
}

// Members returns the members' base URLs in order.
func (c *Client) Members() []string { return append([]string(nil), c.members...) }

// Member returns the base URL of the member the next request goes to first:
// the one that answered last, or the leader's when that answer named it (the
// first member before any answered).
func (c *Client) Member() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[c.member]
}

func (c *Client) current() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.member
}

// Do sends one request, failing over between members (see the package
// documentation). path is the API path with its query ("/v1/routes/25565").
// in, when not nil, is sent as JSON (a json.RawMessage as it is); a 2xx
// answer is decoded into out when out is not nil (a *json.RawMessage
// receives the answer as it came). Any other answer is an *Error; when
// every member failed, the error wraps each member's *Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = b
	}
	data, err := c.Try(ctx, method, path, body)
	if err != nil || out == nil {
		return err
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Try sends body (nil: none) to the members in turn, from the one that
// answered last, and returns the first 2xx answer's body or the error that
// ended the walk. It is Do without JSON.
func (c *Client) Try(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	n := len(c.members)
	start := c.current()
	var errs []error
	var last error
	for i := range n {
		idx := (start + i) % n
		data, leader, err := c.send(ctx, idx, method, path, body)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var e *Error
		if err == nil || (errors.As(err, &e) && !e.Retryable()) {
			if idx != start {
				c.log.Info("switched member", "from", c.members[start], "to", c.members[idx],
					"reason", errString(last))
			}
			if next := c.follow(idx, leader); next != idx {
				c.log.Debug("following the leader", "leader", leader, "from", c.members[idx], "to", c.members[next])
			}
			return data, err
		}
		c.log.Debug("member failed", "member", c.members[idx], "err", err)
		errs = append(errs, err)
		last = err
	}
	if len(errs) > 1 {
		// Every member failed: say why for each. Wrapping keeps each
		// *Error reachable for errors.As.
		last = fmt.Errorf("all %d members failed: "+strings.TrimSuffix(strings.Repeat("%w; ", len(errs)), "; "),
			append([]any{len(errs)}, anySlice(errs)...)...)
	}
	return nil, last
}

// follow records that member idx ended a request's walk naming leader, and
// picks the member the next request goes to first: the one known to be the
// leader; while none is, a member not heard from (not asked within
// reexplore), since any member accepts writes and asking it costs at most
// one forward; otherwise idx. It returns that member.
func (c *Client) follow(idx int, leader string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := idx
	if leader != "" && c.names[idx] != leader {
		if j := slices.Index(c.names, leader); j >= 0 {
			next = j
		} else {
			now := time.Now()
			for i := 1; i < len(c.members); i++ {
				j := (idx + i) % len(c.members)
				if c.names[j] == "" && now.Sub(c.asked[j]) >= reexplore {
					c.asked[j] = now
					next = j
					break
				}
			}
		}
	}
	c.member = next
	return next
}

// learn records the node name member idx answered with (api.NodeHeader)
// and returns the leader it named (api.LeaderHeader); a name that is not
// a plausible node name is ignored.
func (c *Client) learn(idx int, h http.Header) (leader string) {
	if name := h.Get(api.NodeHeader); nodeName(name) {
		c.mu.Lock()
		c.names[idx] = name
		c.mu.Unlock()
	}
	if leader = h.Get(api.LeaderHeader); !nodeName(leader) {
		return ""
	}
	return leader
}

// nodeName reports whether s can be a node name: 1 to 128 visible ASCII
// characters.
func nodeName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// Send makes one request to member idx (an index into Members) and returns
// a 2xx answer's body; anything else is an *Error. It does not fail over.
func (c *Client) Send(ctx context.Context, idx int, method, path string, body []byte) ([]byte, error) {
	data, _, err := c.send(ctx, idx, method, path, body)
	return data, err
}

// send is Send that also returns the leader the answer named ("" if none).
func (c *Client) send(ctx context.Context, idx int, method, path string, body []byte) ([]byte, string, error) {
	member := c.members[idx]
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, member+path, rd)
	if err != nil {
		return nil, "", &Error{Member: member, Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("User-Agent", c.ua)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The *url.Error repeats method and URL; the member says enough.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, "", &Error{Member: member, Err: err}
	}
	defer resp.Body.Close()
	leader := c.learn(idx, resp.Header)
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if resp.StatusCode/100 == 2 {
		if err != nil {
			return nil, "", &Error{Member: member, Err: fmt.Errorf("read answer: %w", err)}
		}
		return data, leader, nil
	}
	msg := strings.TrimSpace(string(data))
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	if len(e.Code) > 64 {
		e.Code = ""
	}
	return nil, leader, &Error{Member: member, Status: resp.StatusCode, Message: msg, Code: e.Code}
}

// Codes the API gives in error answers (see api.CodePortTaken).
const (
	// CodePortTaken: the port belongs to a route of another name (409).
	CodePortTaken = api.CodePortTaken
	// CodeNotOwner: the route on the port belongs to another token (403).
	CodeNotOwner = api.CodeNotOwner
	// CodeInvalidToken: the API knows no such token (403).
	CodeInvalidToken = api.CodeInvalidToken
)

// Error is a failed request to one member: a transport error (Status 0,
// Err set) or an answer that is not 2xx (Status and the API's message).
type Error struct {
	// Member is the base URL of the member asked.
	Member string
	// Status is the HTTP status, 0 when the member was not reached.
	Status int
	// Message is the API's error message (at most 300 bytes).
	Message string
	// Code is the API's machine-readable reason, when it gave one
	// (CodePortTaken, CodeNotOwner, CodeInvalidToken).
	Code string
	// Err is the transport error when Status is 0.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("%s unreachable: %v", e.Member, e.Err)
	}
	return fmt.Sprintf("HTTP %d from %s: %s", e.Status, e.Member, e.Message)
}

// Unwrap returns the transport error.
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether another member, or a later attempt, may
// succeed: the member was unreachable, failed (5xx), or asked to be retried
// (408, 429).
func (e *Error) Retryable() bool {
	return e.Status == 0 || e.Status >= 500 ||
		e.Status == http.StatusRequestTimeout || e.Status == http.StatusTooManyRequests
}

// StatusOf returns the HTTP status of the *Error in err's chain, 0 when
// there is none or the member was not reached.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

func anySlice(errs []error) []any {
	out := make([]any, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// portPath is /v1/routes/{port}.
func portPath(port int) string { return "/v1/routes/" + strconv.Itoa(port) }
