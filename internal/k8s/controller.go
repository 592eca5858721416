// Package k8s is drawbridge's Kubernetes load-balancer controller: it
// serves Services of type LoadBalancer whose loadBalancerClass is
// drawbridge's (drawbridge.io/edge by default) with routes on a drawbridge
// cluster, and writes the cluster's floating IP into their status.
//
// It is level-triggered: informers on Services, Nodes and EndpointSlices
// queue the Services to look at, and each reconcile compares what the
// Service wants with drawbridge's route table as it is now, so a missed or
// repeated event changes nothing and a periodic resync repairs drift in
// either direction. See DESIGN.md beside this file.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

// Names the controller writes into Kubernetes objects.
const (
	// DefaultClass is the loadBalancerClass served by default.
	DefaultClass = "drawbridge.io/edge"
	// Finalizer keeps a Service until its routes are removed.
	Finalizer = "drawbridge.io/routes"
	// ConditionRoutes is the Service status condition that says whether
	// every port the Service asks for is routed.
	ConditionRoutes = "drawbridge.io/RoutesReady"
	// DefaultNamePrefix starts the name of every route the controller
	// manages; routes with it that no Service wants are removed.
	DefaultNamePrefix = "k8s."
	// controllerAgent is the source of the Events it records.
	controllerAgent = "drawbridge-controller"
)

// Reasons of Events and of the routes condition.
const (
	ReasonRouted = "Routed"
	// ReasonPortConflict: the public port belongs to another route (of
	// another name, or another token's); it is left alone.
	ReasonPortConflict = "PortConflict"
	// ReasonForbidden: the controller's token may not make the route (a
	// port outside its ports, a name outside its globs, a backend outside
	// its CIDRs).
	ReasonForbidden = "Forbidden"
	// ReasonRefused: drawbridge refused the route for another reason (its
	// backend policy, a reserved port, a limit).
	ReasonRefused             = "Refused"
	ReasonUnauthorized        = "Unauthorized"
	ReasonUnsupportedProtocol = "UnsupportedProtocol"
	ReasonNoNodePort          = "NoNodePort"
	ReasonInvalidAnnotation   = "InvalidAnnotation"
	ReasonNoAddress           = "NoExternalAddress"
	ReasonNoPorts             = "NoRoutablePorts"
	// ReasonInvalidHealthCheckPort: a Local Service's healthCheckNodePort
	// is not a port; its backends are checked by TCP instead.
	ReasonInvalidHealthCheckPort = "InvalidHealthCheckNodePort"
)

// gcKey is the queue item that removes managed routes no Service wants. It
// cannot be a namespace/name key.
const gcKey = "#gc"

// Config is the validated configuration of a Controller.
type Config struct {
	// Class is the loadBalancerClass served (DefaultClass when empty).
	Class string
	// ClaimUnclassed also serves LoadBalancer Services with no class.
	ClaimUnclassed bool
	// ExternalIP, when set, is written into Service status instead of the
	// floating IP drawbridge reports.
	ExternalIP string
	// NamePrefix starts every managed route's name (DefaultNamePrefix when
	// empty). Two controllers sharing one drawbridge cluster need
	// different prefixes.
	NamePrefix string
	// Resync is how often every Service is compared with drawbridge again
	// and unwanted routes removed, to repair drift (default 1m).
	Resync time.Duration
	// Workers reconcile Services in parallel (default 2).
	Workers int
	// RefusedRetry is how soon a Service whose routes drawbridge refused
	// (a conflict, a policy) is tried again (default 30s).
	RefusedRetry time.Duration
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.Class == "" {
		c.Class = DefaultClass
	}
	if c.NamePrefix == "" {
		c.NamePrefix = DefaultNamePrefix
	}
	if c.Resync == 0 {
		c.Resync = time.Minute
	}
	if c.Workers == 0 {
		c.Workers = 2
	}
	if c.RefusedRetry == 0 {
		c.RefusedRetry = 30 * time.Second
	}
	var errs []error
	if err := fsm.ValidateName("name prefix", c.NamePrefix); err != nil || len(c.NamePrefix) > 24 {
		errs = append(errs, fmt.Errorf("name prefix %q must match [a-z0-9][a-z0-9._-]* and be at most 24 characters", c.NamePrefix))
	}
	if c.ExternalIP != "" {
		a, err := netip.ParseAddr(c.ExternalIP)
		if err != nil || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("external IP %q is not an IP address", c.ExternalIP))
		} else {
			c.ExternalIP = a.Unmap().String()
		}
	}
	if c.Resync < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("resync %s must be at least 100ms", c.Resync))
	}
	if c.Workers < 1 || c.Workers > 64 {
		errs = append(errs, fmt.Errorf("workers %d must be from 1 to 64", c.Workers))
	}
	return errors.Join(errs...)
}

// Clients are the Kubernetes API groups the controller uses. Only these
// typed clients are linked in, not the whole clientset and its informers
// (which would double the size of the drawbridge binary).
type Clients struct {
	Core         typedcorev1.CoreV1Interface
	Discovery    discoveryv1client.DiscoveryV1Interface
	Coordination coordinationv1client.CoordinationV1Interface
}

// NewClients builds the clients from a REST configuration.
func NewClients(cfg *rest.Config) (Clients, error) {
	core, err := typedcorev1.NewForConfig(cfg)
	if err != nil {
		return Clients{}, err
	}
	disc, err := discoveryv1client.NewForConfig(cfg)
	if err != nil {
		return Clients{}, err
	}
	coord, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return Clients{}, err
	}
	return Clients{Core: core, Discovery: disc, Coordination: coord}, nil
}

// Controller reconciles LoadBalancer Services with drawbridge routes.
type Controller struct {
	cfg    Config
	kube   Clients
	routes Routes
	log    *slog.Logger

	informers []cache.SharedIndexInformer
	services  corelisters.ServiceLister
	nodes     corelisters.NodeLister
	slices    discoverylisters.EndpointSliceLister
	synced    []cache.InformerSynced

	queue       workqueue.TypedRateLimitingInterface[string]
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder

	// warnedUnscoped is set once the controller warned that its token
	// sees other tokens' routes.
	warnedUnscoped atomic.Bool

	// mu guards reconciled.
	mu sync.Mutex
	// reconciled counts finished reconciles, for tests and logs.
	reconciled uint64
}

// New builds a controller; Run starts it. cfg must have been validated.
func New(cfg Config, kube Clients, routes Routes, log *slog.Logger) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{
		cfg:    cfg,
		kube:   kube,
		routes: routes,
		log:    log.With("component", "controller"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "drawbridge-services"}),
	}
	// The informers do not resync: Run queues every Service each
	// cfg.Resync itself, which also compares them with drawbridge.
	svcInformer := newInformer(&corev1.Service{}, 0,
		func(o metav1.ListOptions) (runtime.Object, error) {
			return kube.Core.Services("").List(context.Background(), o)
		},
		func(o metav1.ListOptions) (watch.Interface, error) {
			return kube.Core.Services("").Watch(context.Background(), o)
		})
	nodeInformer := newInformer(&corev1.Node{}, 0,
		func(o metav1.ListOptions) (runtime.Object, error) {
			return kube.Core.Nodes().List(context.Background(), o)
		},
		func(o metav1.ListOptions) (watch.Interface, error) {
			return kube.Core.Nodes().Watch(context.Background(), o)
		})
	sliceInformer := newInformer(&discoveryv1.EndpointSlice{}, 0,
		func(o metav1.ListOptions) (runtime.Object, error) {
			return kube.Discovery.EndpointSlices("").List(context.Background(), o)
		},
		func(o metav1.ListOptions) (watch.Interface, error) {
			return kube.Discovery.EndpointSlices("").Watch(context.Background(), o)
		})
	c.informers = []cache.SharedIndexInformer{svcInformer, nodeInformer, sliceInformer}
	c.services = corelisters.NewServiceLister(svcInformer.GetIndexer())
	c.nodes = corelisters.NewNodeLister(nodeInformer.GetIndexer())
	c.slices = discoverylisters.NewEndpointSliceLister(sliceInformer.GetIndexer())
	for _, inf := range c.informers {
		c.synced = append(c.synced, inf.HasSynced)
	}

	if _, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueService,
		UpdateFunc: func(_, obj any) { c.enqueueService(obj) },
		DeleteFunc: c.enqueueService,
	}); err != nil {
		return nil, err
	}
	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.enqueueAll() },
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := obj.(*corev1.Node)
			if !ok1 || !ok2 || nodeMatters(o) != nodeMatters(n) {
				c.enqueueAll()
			}
		},
		DeleteFunc: func(any) { c.enqueueAll() },
	}); err != nil {
		return nil, err
	}
	if _, err := sliceInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueSliceService,
		UpdateFunc: func(_, obj any) { c.enqueueSliceService(obj) },
		DeleteFunc: c.enqueueSliceService,
	}); err != nil {
		return nil, err
	}

	c.broadcaster = record.NewBroadcaster()
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: controllerAgent})
	return c, nil
}

// newInformer is a shared informer over one list and watch, indexed by
// namespace so listers can read it.
func newInformer(obj runtime.Object, resync time.Duration,
	list func(metav1.ListOptions) (runtime.Object, error), w func(metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(&cache.ListWatch{ListFunc: list, WatchFunc: w}, obj, resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// nodeMatters is what of a node decides whether and how it is a backend;
// other changes (heartbeats, images) are ignored.
func nodeMatters(n *corev1.Node) string {
	_, excluded := n.Labels[LabelExcludeFromLB]
	return fmt.Sprintf("%t/%t/%t/%s", nodeReady(n), excluded, n.DeletionTimestamp != nil, nodeInternalIP(n))
}

func (c *Controller) enqueueService(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		c.log.Warn("cannot key object", "err", err)
		return
	}
	c.queue.Add(key)
}

// enqueueAll queues every Service the controller serves or has served
// (the nodes changed).
func (c *Controller) enqueueAll() {
	svcs, err := c.services.List(labels.Everything())
	if err != nil {
		return
	}
	for _, s := range svcs {
		if c.claims(s) || hasFinalizer(s) {
			c.queue.Add(s.Namespace + "/" + s.Name)
		}
	}
}

// enqueueSliceService queues the Service of an EndpointSlice when its
// externalTrafficPolicy is Local: only then do endpoints choose backends.
func (c *Controller) enqueueSliceService(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return
	}
	svc, err := c.services.Services(s.Namespace).Get(name)
	if err != nil || !c.claims(svc) || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		return
	}
	c.queue.Add(s.Namespace + "/" + name)
}

// claims reports whether the Service is one this controller serves.
func (c *Controller) claims(s *corev1.Service) bool {
	if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	if s.Spec.LoadBalancerClass == nil {
		return c.cfg.ClaimUnclassed
	}
	return *s.Spec.LoadBalancerClass == c.cfg.Class
}

func hasFinalizer(s *corev1.Service) bool { return slices.Contains(s.Finalizers, Finalizer) }

// Run starts the informers and workers and blocks until ctx ends. Run it
// only while leading (see RunWithLeaderElection).
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.kube.Core.Events("")})
	defer c.broadcaster.Shutdown()

	var informers sync.WaitGroup
	defer informers.Wait()
	for _, inf := range c.informers {
		informers.Add(1)
		go func() {
			defer informers.Done()
			inf.Run(ctx.Done())
		}()
	}
	c.log.Info("waiting for caches", "class", c.cfg.Class, "claim_unclassed", c.cfg.ClaimUnclassed)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("caches did not sync: %w", context.Cause(ctx))
	}
	c.log.Info("caches synced; reconciling", "resync", c.cfg.Resync, "workers", c.cfg.Workers)

	// Removing unwanted routes waits for the synced caches: with an empty
	// cache every managed route would look unwanted.
	c.queue.Add(gcKey)
	go wait.UntilWithContext(ctx, func(context.Context) {
		c.queue.Add(gcKey)
		c.enqueueAll()
	}, c.cfg.Resync)

	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

// Reconciled returns how many reconciles have finished.
func (c *Controller) Reconciled() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconciled
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	var err error
	var retryAfter time.Duration
	if key == gcKey {
		err = c.collectGarbage(ctx)
	} else {
		retryAfter, err = c.reconcile(ctx, key)
	}
	c.mu.Lock()
	c.reconciled++
	c.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil:
		c.log.Warn("reconcile failed; retrying", "service", key, "err", err)
		c.queue.AddRateLimited(key)
	case retryAfter > 0:
		c.queue.Forget(key)
		c.queue.AddAfter(key, retryAfter)
	default:
		c.queue.Forget(key)
	}
	return true
}

// reconcile brings one Service and its routes to what it asks for. A
// non-nil error is retried with backoff; retryAfter > 0 asks for another
// look later (drawbridge refused something).
func (c *Controller) reconcile(ctx context.Context, key string) (retryAfter time.Duration, err error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil
	}
	stem := routeStem(c.cfg.NamePrefix, ns, name)
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Gone without our finalizer (it was never ours, or removed by
		// hand): remove whatever routes it still has.
		return 0, c.removeRoutes(ctx, stem, nil)
	}
	if err != nil {
		return 0, err
	}
	if !c.claims(svc) || svc.DeletionTimestamp != nil {
		if !hasFinalizer(svc) {
			return 0, nil
		}
		if err := c.removeRoutes(ctx, stem, nil); err != nil {
			c.reportRemovalRefused(svc, err)
			return 0, err
		}
		if svc.DeletionTimestamp == nil {
			if err := c.clearStatus(ctx, svc); err != nil {
				return 0, err
			}
		}
		c.log.Info("released", "service", key, "deleting", svc.DeletionTimestamp != nil)
		_, err := c.patchFinalizer(ctx, svc, false)
		return 0, err
	}

	if !hasFinalizer(svc) {
		// The finalizer goes on before any route exists, so no route can
		// outlive its Service unnoticed.
		patched, err := c.patchFinalizer(ctx, svc, true)
		if err != nil {
			return 0, err
		}
		if patched != nil {
			// The status update below must not race our own patch.
			svc = patched
		}
	}

	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return 0, err
	}
	var eps []*discoveryv1.EndpointSlice
	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
		eps, err = c.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
		if err != nil {
			return 0, err
		}
	}
	want, problems := desiredRoutes(c.cfg.NamePrefix, svc, nodes, eps)

	have, err := c.routes.ListRoutes(ctx)
	if reason, refused := refusal(err); refused {
		// drawbridge refuses the controller itself (an unknown token, one
		// an edge node lacks): every Service says so, and keeps its
		// address and the routes it has.
		cond := metav1.Condition{Type: ConditionRoutes, Status: metav1.ConditionFalse, Reason: reason,
			Message: "drawbridge refused to list the routes: " + apiMessage(err), ObservedGeneration: svc.Generation}
		if err := c.writeStatus(ctx, svc, svc.Status.LoadBalancer.Ingress, cond, []problem{{Reason: reason, Message: cond.Message}}); err != nil {
			return 0, err
		}
		return c.cfg.RefusedRetry, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	byPort := make(map[int]fsm.Route, len(have))
	for _, r := range have {
		byPort[r.Port] = r
	}

	routed := 0
	refused := false
	for _, r := range want {
		cur, exists := byPort[r.Port]
		switch {
		case exists && sameRoute(cur, r):
			routed++
			continue
		case exists && cur.Name != r.Name:
			// Never taken from another route: not even from one of our
			// own Services, which would flap between the two.
			problems = append(problems, problem{Reason: ReasonPortConflict, Message: fmt.Sprintf(
				"public port %d belongs to route %q, not this Service; it was left alone (free the port, or choose another with the %s annotation)",
				r.Port, cur.Name, AnnotationPublicPorts)})
			refused = true
			continue
		}
		if err := c.routes.PutRoute(ctx, r); err != nil {
			reason, isRefusal := refusal(err)
			if !isRefusal {
				return 0, fmt.Errorf("put route %d (%s): %w", r.Port, r.Name, err)
			}
			problems = append(problems, refusalProblem(reason, r, err))
			refused = true
			continue
		}
		c.log.Info("route set", "service", key, "port", r.Port, "name", r.Name, "backends", len(r.Backends))
		routed++
	}
	// Routes of this Service it no longer wants (a port removed, or moved
	// to another public port).
	keep := map[int]string{}
	for _, r := range want {
		keep[r.Port] = r.Name
	}
	if err := c.removeRoutes(ctx, stem, keep, have...); err != nil {
		c.reportRemovalRefused(svc, err)
		return 0, err
	}

	address := c.cfg.ExternalIP
	if address == "" {
		address, err = c.floatingIP(ctx)
		if err != nil {
			return 0, err
		}
	}
	if address == "" {
		problems = append(problems, problem{Reason: ReasonNoAddress, Message: "drawbridge reports no floating IP: configure floating_ip on the edge nodes or start the controller with --external-ip"})
	}
	if len(want) == 0 && len(problems) == 0 {
		problems = append(problems, problem{Reason: ReasonNoPorts, Message: "the Service has no port drawbridge can route"})
	}
	var ingress []corev1.LoadBalancerIngress
	if routed > 0 && address != "" {
		ingress = []corev1.LoadBalancerIngress{{IP: address}}
	}
	cond := metav1.Condition{Type: ConditionRoutes, Status: metav1.ConditionTrue, Reason: ReasonRouted,
		Message: fmt.Sprintf("%d of %d ports routed at %s", routed, len(want), address), ObservedGeneration: svc.Generation}
	if len(problems) > 0 {
		msgs := make([]string, len(problems))
		for i, p := range problems {
			msgs[i] = p.Message
		}
		cond.Reason = problems[0].Reason
		cond.Message = strings.Join(msgs, "; ")
		if routed < len(want) || len(want) == 0 || address == "" {
			cond.Status = metav1.ConditionFalse
		}
	}
	if err := c.writeStatus(ctx, svc, ingress, cond, problems); err != nil {
		return 0, err
	}
	if refused {
		return c.cfg.RefusedRetry, nil
	}
	return 0, nil
}

// refusalProblem says on the Service why drawbridge refused route r.
func refusalProblem(reason string, r fsm.Route, err error) problem {
	var msg string
	switch reason {
	case ReasonPortConflict:
		msg = fmt.Sprintf("public port %d belongs to another route, not this Service; it was left alone: drawbridge said %s (free the port, or choose another with the %s annotation)",
			r.Port, apiMessage(err), AnnotationPublicPorts)
	case ReasonForbidden:
		msg = fmt.Sprintf("the controller's drawbridge token may not make route %d (%s): drawbridge said %s (widen the token's ports, names or backend_cidrs on the edge nodes; a port can also be moved into its ports with the %s annotation)",
			r.Port, r.Name, apiMessage(err), AnnotationPublicPorts)
	default:
		msg = fmt.Sprintf("drawbridge refused route %d (%s): %s", r.Port, r.Name, apiMessage(err))
	}
	return problem{Reason: reason, Message: msg}
}

// reportRemovalRefused records a Warning Event when drawbridge refused to
// remove one of the Service's routes (the token's scope was narrowed since
// the controller made it): the finalizer stays, and the removal is retried
// with backoff, until the token allows it or an admin deletes the route.
func (c *Controller) reportRemovalRefused(svc *corev1.Service, err error) {
	if reason, refused := refusal(err); refused {
		c.recorder.Event(svc, corev1.EventTypeWarning, reason, fmt.Sprintf(
			"drawbridge refused to remove a route of this Service: %v; retrying (widen the controller's token, or delete the route with an admin token)", err))
	}
}

// removeRoutes deletes the routes named with stem, except those in keep
// (port -> name). have is the route table when the caller already read it.
func (c *Controller) removeRoutes(ctx context.Context, stem string, keep map[int]string, have ...fsm.Route) error {
	if have == nil {
		var err error
		if have, err = c.routes.ListRoutes(ctx); err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
	}
	for _, r := range have {
		if !ownedByService(stem, r.Name) || keep[r.Port] == r.Name {
			continue
		}
		if err := c.routes.DeleteRoute(ctx, r.Port, r.Name); err != nil {
			return fmt.Errorf("delete route %d (%s): %w", r.Port, r.Name, err)
		}
		c.log.Info("route removed", "port", r.Port, "name", r.Name)
	}
	return nil
}

// collectGarbage removes every managed route (named with the prefix) that
// no served Service wants: the Service was deleted while the controller
// was away, or the route was made by hand under the controller's prefix.
func (c *Controller) collectGarbage(ctx context.Context) error {
	// The table is read before the cache: a route made by a reconcile that
	// saw its Service is then always wanted by what the cache holds now.
	have, err := c.routes.ListRoutes(ctx)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	c.warnIfUnscoped(have)
	svcs, err := c.services.List(labels.Everything())
	if err != nil {
		return err
	}
	wanted := map[string]bool{} // stem of each served Service
	for _, s := range svcs {
		if c.claims(s) && s.DeletionTimestamp == nil {
			wanted[routeStem(c.cfg.NamePrefix, s.Namespace, s.Name)] = true
		}
	}
	for _, r := range have {
		if !strings.HasPrefix(r.Name, c.cfg.NamePrefix) {
			continue
		}
		i := strings.LastIndexByte(r.Name, '_')
		if i < 0 || wanted[r.Name[:i+1]] {
			// A route of a served Service: its own reconcile decides.
			continue
		}
		if err := c.routes.DeleteRoute(ctx, r.Port, r.Name); err != nil {
			return fmt.Errorf("delete route %d (%s): %w", r.Port, r.Name, err)
		}
		c.log.Info("route removed: no Service wants it", "port", r.Port, "name", r.Name)
	}
	c.log.Debug("garbage check done", "routes", len(have), "services", len(wanted))
	return nil
}

// warnIfUnscoped warns once when the table the controller reads holds
// routes of more than one token: a register token lists only its own, so
// the controller runs on an admin (or read) token, which may change every
// route. The README shows the register token to give it instead.
func (c *Controller) warnIfUnscoped(have []fsm.Route) {
	if c.warnedUnscoped.Load() {
		return
	}
	owners := map[string]bool{}
	for _, r := range have {
		owners[r.Token] = true
	}
	if len(owners) > 1 && !c.warnedUnscoped.Swap(true) {
		c.log.Warn("the controller's drawbridge token sees routes of other tokens: it is not a register token, and may change any route; give it a register token limited to its ports, its name prefix and the nodes' CIDRs",
			"owners", len(owners))
	}
}

// floatingIP asks drawbridge for the floating IP and checks it is one.
func (c *Controller) floatingIP(ctx context.Context) (string, error) {
	ip, err := c.routes.FloatingIP(ctx)
	if err != nil {
		return "", fmt.Errorf("read the floating IP: %w", err)
	}
	if ip == "" {
		return "", nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("drawbridge reports floating IP %q, which is not an IP address", ip)
	}
	return a.Unmap().String(), nil
}

// patchFinalizer adds or removes the finalizer with a strategic merge
// patch, leaving other finalizers alone.
func (c *Controller) patchFinalizer(ctx context.Context, svc *corev1.Service, add bool) (*corev1.Service, error) {
	var patch string
	if add {
		patch = fmt.Sprintf(`{"metadata":{"finalizers":[%q]}}`, Finalizer)
	} else {
		patch = fmt.Sprintf(`{"metadata":{"$deleteFromPrimitiveList/finalizers":[%q]}}`, Finalizer)
	}
	out, err := c.kube.Core.Services(svc.Namespace).Patch(ctx, svc.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("patch finalizer: %w", err)
	}
	return out, nil
}

// writeStatus sets the Service's load-balancer ingress and routes
// condition when they differ from what it has, and records an Event for
// each problem when the condition changes (so a resync that finds the same
// problem does not repeat it).
func (c *Controller) writeStatus(ctx context.Context, svc *corev1.Service, ingress []corev1.LoadBalancerIngress,
	cond metav1.Condition, problems []problem) error {
	old := meta.FindStatusCondition(svc.Status.Conditions, ConditionRoutes)
	condChanged := old == nil || old.Status != cond.Status || old.Reason != cond.Reason || old.Message != cond.Message ||
		old.ObservedGeneration != cond.ObservedGeneration
	ingressChanged := !sameIngress(svc.Status.LoadBalancer.Ingress, ingress)
	if !condChanged && !ingressChanged {
		return nil
	}
	s := svc.DeepCopy()
	s.Status.LoadBalancer.Ingress = ingress
	meta.SetStatusCondition(&s.Status.Conditions, cond)
	if _, err := c.kube.Core.Services(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("update status: %w", err)
	}
	if condChanged {
		for _, p := range problems {
			c.recorder.Event(svc, corev1.EventTypeWarning, p.Reason, p.Message)
		}
		if cond.Status == metav1.ConditionTrue && len(problems) == 0 {
			c.recorder.Event(svc, corev1.EventTypeNormal, ReasonRouted, cond.Message)
		}
	}
	return nil
}

// clearStatus removes the ingress and condition this controller wrote, for
// a Service it no longer serves.
func (c *Controller) clearStatus(ctx context.Context, svc *corev1.Service) error {
	if meta.FindStatusCondition(svc.Status.Conditions, ConditionRoutes) == nil && len(svc.Status.LoadBalancer.Ingress) == 0 {
		return nil
	}
	s := svc.DeepCopy()
	s.Status.LoadBalancer = corev1.LoadBalancerStatus{}
	meta.RemoveStatusCondition(&s.Status.Conditions, ConditionRoutes)
	if _, err := c.kube.Core.Services(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("clear status: %w", err)
	}
	return nil
}

// sameIngress compares the addresses of two ingress lists (the API server
// may default other fields, such as ipMode).
func sameIngress(a, b []corev1.LoadBalancerIngress) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].IP != b[i].IP || a[i].Hostname != b[i].Hostname {
			return false
		}
	}
	return true
}
