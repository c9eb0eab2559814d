/*
 * driver.c: the paper benchmark's load generator, over libpq.
 *
 *   driver -d CONNINFO -s SYSTEM -w OP -c CLIENTS -T SECONDS [-R RATE] [-S SEED]
 *          [-L RTT_US] [-P NAME=VALUE]...
 *
 * SYSTEM is "apiary" (each operation is one apiary_invoke, or apiary_start
 * + apiary_result for the workflows: checkout, timeline) or "interactive"
 * (the same statements sent by the client one round trip at a time, inside
 * BEGIN/COMMIT where they write: what a function in a FaaS container does
 * against its database).  OP is one of the operations below.
 *
 * Closed loop (no -R): CLIENTS threads, one connection each, issue
 * operations back to back for SECONDS.  Open loop (-R RATE): operations
 * arrive as a Poisson process of RATE per second; CLIENTS connections take
 * them in turn, and an operation's latency runs from its arrival, so time
 * spent waiting for a free connection counts (no coordinated omission).
 *
 * Prints one line:
 *   ops=N retries=N elapsed=S tput=OPS/S p50=MS p90=MS p99=MS
 * Any error other than a serialization failure or deadlock (which are
 * retried, and counted) stops the run with the error and exit status 1.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* scale: must match what paper.sh loaded (passed as -P name=value) */
static int	n_items = 10000, n_shop_users = 10000, n_hotels = 100, n_nights = 30,
			n_rt_users = 10000, n_counters = 10000;

typedef struct Client
{
	int			id;
	PGconn	   *conn;
	uint64_t	rng;
	double	   *lat;			/* ms */
	long		nlat, caplat;
	long		retries;
	char		prepared[64][32];
	int			nprepared;
} Client;

static const char *conninfo, *sys_name, *op_name;
static int	nclients = 1;
static double seconds = 5, rate = 0;
static uint64_t seed = 1;
static int	is_apiary;
static long rtt_us = 0;			/* -L: added to every round trip */

static double t_start, t_end;
static pthread_mutex_t arrivals_lock = PTHREAD_MUTEX_INITIALIZER;
static double next_arrival;
static uint64_t arrivals_rng;
static pthread_barrier_t barrier;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "driver: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static uint64_t
next_rand(uint64_t *s)
{
	/* splitmix64 */
	uint64_t	z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* uniform in [lo, hi] */
static int
rnd(Client *c, int lo, int hi)
{
	return lo + (int) (next_rand(&c->rng) % (uint64_t) (hi - lo + 1));
}

static double
rnd01(uint64_t *s)
{
	return (next_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

/*
 * -L RTT: a network between client and server, as between a FaaS container
 * and its database: every round trip (a statement, BEGIN or COMMIT) waits
 * RTT microseconds more, on the client, for apiary and the interactive
 * baseline alike.
 */
static void
network(void)
{
	struct timespec ts = {rtt_us / 1000000, (rtt_us % 1000000) * 1000};

	if (rtt_us > 0)
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
}

/* thrown (longjmp-free) as a return code: the transaction must be retried */
#define RETRY 1

/*
 * Run a statement, preparing it on this connection the first time.  Returns
 * the result (caller clears it), or NULL for a serialization failure or
 * deadlock, after which the caller retries the whole operation; anything
 * else is fatal.
 */
static PGresult *
run(Client *c, const char *name, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res;
	int			i;
	int			found = 0;

	for (i = 0; i < c->nprepared; i++)
		if (strcmp(c->prepared[i], name) == 0)
			found = 1;
	if (!found)
	{
		res = PQprepare(c->conn, name, sql, nparams, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			die("client %d: preparing %s: %s", c->id, name, PQerrorMessage(c->conn));
		PQclear(res);
		if (c->nprepared == 64)
			die("too many statements");
		snprintf(c->prepared[c->nprepared++], 32, "%s", name);
	}
	network();
	res = PQexecPrepared(c->conn, name, nparams, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK)
		return res;
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		if (state && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0))
		{
			PQclear(res);
			return NULL;
		}
		die("client %d: %s %s: %s", c->id, sys_name, op_name, PQresultErrorMessage(res));
	}
	return NULL;
}

/* a statement without parameters and result, such as BEGIN */
static int
simple(Client *c, const char *sql)
{
	PGresult   *res;

	network();
	res = PQexec(c->conn, sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		if (state && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0))
		{
			PQclear(res);
			return RETRY;
		}
		die("client %d: %s: %s", c->id, sql, PQresultErrorMessage(res));
	}
	PQclear(res);
	return 0;
}

static void
rollback(Client *c)
{
	network();
	PQclear(PQexec(c->conn, "ROLLBACK"));
}

/* one statement, its single value copied to out (may be NULL) */
static int
one(Client *c, const char *name, const char *sql, int n, const char *const *p,
	char *out, size_t outlen)
{
	PGresult   *res = run(c, name, sql, n, p);

	if (res == NULL)
		return RETRY;
	if (out)
	{
		if (PQntuples(res) != 1)
			die("client %d: %s returned %d rows", c->id, name, PQntuples(res));
		snprintf(out, outlen, "%s", PQgetvalue(res, 0, 0));
	}
	PQclear(res);
	return 0;
}

/* ---- apiary: every operation is one call, or start + result ---- */

static int
invoke(Client *c, const char *fn, const char *args)
{
	const char *p[2] = {fn, args};

	return one(c, "invoke", "SELECT apiary_invoke($1, $2::jsonb)", 2, p, NULL, 0);
}

static int
workflow(Client *c, const char *fn, const char *args)
{
	const char *p[2] = {fn, args};
	char		id[128];
	PGresult   *res;

	if (one(c, "start", "SELECT apiary_start($1, $2::jsonb)", 2, p, id, sizeof id))
		return RETRY;
	p[0] = id;
	network();
	res = PQexecParams(c->conn, "SELECT apiary_result($1, '60 s')", 1, NULL, p, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		/* loud, with the workflow's tasks as apiary sees them */
		PGresult   *st;
		int			i, j;

		fprintf(stderr, "driver: client %d: workflow %s: %s", c->id, id, PQresultErrorMessage(res));
		st = PQexecParams(c->conn, "SELECT * FROM apiary_status($1)", 1, NULL, p, NULL, NULL, 0);
		for (i = 0; i < PQntuples(st); i++)
		{
			for (j = 0; j < PQnfields(st); j++)
				fprintf(stderr, "%s%s=%s", j ? " " : "  ", PQfname(st, j), PQgetvalue(st, i, j));
			fprintf(stderr, "\n");
		}
		exit(1);
	}
	if (res == NULL)
		die("client %d: workflow %s failed with a serialization failure", c->id, id);
	if (PQgetisnull(res, 0, 0))
		die("client %d: workflow %s returned NULL", c->id, id);
	PQclear(res);
	return 0;
}

/* ---- the operations ---- */

static const char *
date_of(int night, char *buf)
{
	/* nights start on 2026-03-01; 30-night window by default */
	struct tm	tm = {.tm_year = 126, .tm_mon = 2, .tm_mday = 1 + night, .tm_hour = 12};

	timegm(&tm);
	strftime(buf, 16, "%Y-%m-%d", &tm);
	return buf;
}

static int
op_browse(Client *c)
{
	char		a[64];
	int			first = rnd(c, 1, n_items - 9);

	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"first\": %d}", first);
		return invoke(c, "shop_browse", a);
	}
	snprintf(a, sizeof a, "%d", first);
	{
		const char *p[1] = {a};

		return one(c, "browse",
				   "SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'price', price, 'stock', stock) ORDER BY id) "
				   "FROM items WHERE id BETWEEN $1 AND $1 + 9", 1, p, NULL, 0);
	}
}

static int
op_cart(Client *c)
{
	char		u[16], i[16], a[96];

	/* the writer half of the shop's users */
	snprintf(u, sizeof u, "%d", rnd(c, n_shop_users / 2 + 1, n_shop_users));
	snprintf(i, sizeof i, "%d", rnd(c, 1, n_items));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s, \"item\": %s}", u, i);
		return invoke(c, "shop_add_to_cart", a);
	}
	{
		const char *p[2] = {u, i};

		/* one statement: autocommit */
		return one(c, "cart",
				   "INSERT INTO carts AS c VALUES ($1, $2, 1) "
				   "ON CONFLICT (uid, item) DO UPDATE SET qty = c.qty + excluded.qty RETURNING qty",
				   2, p, NULL, 0);
	}
}

static int
op_checkout(Client *c)
{
	char		u[16], a[64], total[32], oid[32];
	const char *p[2];

	snprintf(u, sizeof u, "%d", rnd(c, 1, n_shop_users / 2));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s}", u);
		return workflow(c, "shop_checkout", a);
	}
	/* three transactions, as the workflow's three steps */
	p[0] = u;
	if (simple(c, "BEGIN") ||
		one(c, "co_lock", "SELECT 1 FROM items WHERE id IN (SELECT item FROM carts WHERE uid = $1) ORDER BY id FOR UPDATE",
			1, p, NULL, 0) ||
		one(c, "co_reserve",
			"WITH u AS (UPDATE items i SET stock = i.stock - c.qty FROM carts c WHERE c.uid = $1 AND i.id = c.item "
			"RETURNING c.qty * i.price AS amount) SELECT sum(amount) FROM u", 1, p, total, sizeof total) ||
		simple(c, "COMMIT"))
		goto retry;
	/*
	 * Steps 2 and 3 only insert: nothing to retry.  (Nothing would resume a
	 * checkout whose client died here either: the workflow's durability is
	 * what this baseline lacks.)
	 */
	p[1] = total;
	if (simple(c, "BEGIN") ||
		one(c, "co_order", "INSERT INTO orders (uid, total) VALUES ($1, $2) RETURNING id", 2, p, oid, sizeof oid))
		die("checkout: creating the order failed");
	p[0] = oid;
	p[1] = u;
	if (one(c, "co_lines", "INSERT INTO order_lines SELECT $1, c.item, c.qty, i.price "
			"FROM carts c JOIN items i ON i.id = c.item WHERE c.uid = $2", 2, p, NULL, 0) ||
		simple(c, "COMMIT"))
		die("checkout: creating the order failed");
	p[1] = total;
	if (simple(c, "BEGIN") ||
		one(c, "co_pay", "INSERT INTO payments VALUES ($1, $2)", 2, p, NULL, 0) ||
		simple(c, "COMMIT"))
		die("checkout: the payment failed");
	return 0;
retry:
	/* the reservation locks rows that others lock in turn */
	rollback(c);
	return RETRY;
}

static void
location(Client *c, char *lat, char *lon)
{
	sprintf(lat, "%.6f", 37.7 + rnd(c, 0, 200000) / 1e6);
	sprintf(lon, "%.6f", -122.5 + rnd(c, 0, 200000) / 1e6);
}

/* the hotels' profiles, the last round trip of search and recommend */
static int
profiles(Client *c, const char *ids)
{
	const char *p[1] = {ids};

	return one(c, "profile", "SELECT jsonb_agg(jsonb_build_object('id', id, 'name', name, 'rate', rate, "
			   "'price', price, 'address', address) ORDER BY id) FROM hotels WHERE id = ANY ($1::int[])",
			   1, p, NULL, 0);
}

static int
op_search(Client *c)
{
	char		lat[32], lon[32], din[16], dout[16], a[160];
	int			in = rnd(c, 0, n_nights - 4);
	char		near[256], avail[256];
	const char *p[4];

	location(c, lat, lon);
	date_of(in, din);
	date_of(in + rnd(c, 1, 3), dout);
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"lat\": %s, \"lon\": %s, \"check_in\": \"%s\", \"check_out\": \"%s\"}",
				 lat, lon, din, dout);
		return invoke(c, "hotel_search", a);
	}
	/* geo, then rate, then profile: three round trips */
	p[0] = lon;
	p[1] = lat;
	if (one(c, "s_geo", "SELECT array_agg(id) FROM (SELECT id FROM hotels ORDER BY loc <-> point($1, $2) LIMIT 5) h",
			2, p, near, sizeof near))
		return RETRY;
	p[0] = near;
	p[1] = din;
	p[2] = dout;
	if (one(c, "s_rate", "SELECT array_agg(hotel) FROM (SELECT hotel FROM room_nights WHERE hotel = ANY ($1::int[]) "
			"AND night >= $2 AND night < $3 GROUP BY hotel HAVING bool_and(booked < capacity)) a",
			3, p, avail, sizeof avail))
		return RETRY;
	return profiles(c, avail);
}

static int
op_recommend(Client *c)
{
	static const char *const req[3] = {"dis", "rate", "price"};
	char		lat[32], lon[32], a[128], best[256];
	const char *r = req[rnd(c, 0, 2)];
	const char *p[3];

	location(c, lat, lon);
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"lat\": %s, \"lon\": %s, \"require\": \"%s\"}", lat, lon, r);
		return invoke(c, "hotel_recommend", a);
	}
	p[0] = lon;
	p[1] = lat;
	p[2] = r;
	if (one(c, "r_best", "SELECT array_agg(id) FROM (SELECT id FROM hotels ORDER BY CASE $3::text "
			"WHEN 'dis' THEN loc <-> point($1, $2) WHEN 'rate' THEN -rate ELSE price END, id LIMIT 5) h",
			3, p, best, sizeof best))
		return RETRY;
	return profiles(c, best);
}

static int
op_reserve(Client *c)
{
	char		u[16], h[16], din[16], dout[16], a[160], freeb[32];
	int			in = rnd(c, 0, n_nights - 4);
	const char *p[5];

	snprintf(u, sizeof u, "%d", rnd(c, 1, 500));
	snprintf(h, sizeof h, "%d", rnd(c, 1, n_hotels));
	date_of(in, din);
	date_of(in + rnd(c, 1, 3), dout);
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s, \"hotel\": %s, \"check_in\": \"%s\", \"check_out\": \"%s\"}",
				 u, h, din, dout);
		return invoke(c, "hotel_reserve", a);
	}
	p[0] = h;
	p[1] = din;
	p[2] = dout;
	if (simple(c, "BEGIN") ||
		one(c, "h_check", "SELECT min(capacity - booked) FROM (SELECT capacity, booked FROM room_nights "
			"WHERE hotel = $1 AND night >= $2 AND night < $3 ORDER BY night FOR UPDATE) x",
			3, p, freeb, sizeof freeb))
		goto retry;
	if (atoi(freeb) < 1)
		die("hotel %s is full", h);
	if (one(c, "h_book", "UPDATE room_nights SET booked = booked + 1 WHERE hotel = $1 AND night >= $2 AND night < $3",
			3, p, NULL, 0))
		goto retry;
	p[0] = u;
	p[1] = h;
	p[2] = din;
	p[3] = dout;
	if (one(c, "h_insert", "INSERT INTO reservations (uid, hotel, check_in, check_out, rooms) "
			"VALUES ($1, $2, $3, $4, 1)", 4, p, NULL, 0) ||
		simple(c, "COMMIT"))
		goto retry;
	return 0;
retry:
	rollback(c);
	return RETRY;
}

static int
op_post(Client *c)
{
	char		u[16], body[64], a[128];
	const char *p[2];

	snprintf(u, sizeof u, "%d", rnd(c, 1, n_rt_users));
	snprintf(body, sizeof body, "a post by %s, %d", u, rnd(c, 0, 1 << 30));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s, \"body\": \"%s\"}", u, body);
		return invoke(c, "retwis_post", a);
	}
	p[0] = u;
	p[1] = body;
	if (simple(c, "BEGIN") ||
		one(c, "p_insert", "INSERT INTO posts (author, body) VALUES ($1, $2)", 2, p, NULL, 0) ||
		one(c, "p_count", "UPDATE rt_users SET nposts = nposts + 1 WHERE id = $1", 1, p, NULL, 0) ||
		simple(c, "COMMIT"))
	{
		rollback(c);
		return RETRY;
	}
	return 0;
}

static int
op_follow(Client *c)
{
	char		u[16], o[16], a[64];
	const char *p[2];
	PGresult   *res;
	int			inserted;

	/* the writer half of retwis's users */
	snprintf(u, sizeof u, "%d", rnd(c, n_rt_users / 2 + 1, n_rt_users));
	snprintf(o, sizeof o, "%d", rnd(c, 1, n_rt_users));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s, \"other\": %s}", u, o);
		return invoke(c, "retwis_follow", a);
	}
	p[0] = u;
	p[1] = o;
	if (simple(c, "BEGIN"))
		goto retry;
	res = run(c, "f_insert", "INSERT INTO follows VALUES ($1, $2) ON CONFLICT DO NOTHING", 2, p);
	if (res == NULL)
		goto retry;
	inserted = atoi(PQcmdTuples(res));
	PQclear(res);
	if ((inserted && one(c, "f_count", "UPDATE rt_users SET nfollowing = nfollowing + 1 WHERE id = $1",
						 1, p, NULL, 0)) ||
		simple(c, "COMMIT"))
		goto retry;
	return 0;
retry:
	rollback(c);
	return RETRY;
}

static int
op_timeline(Client *c)
{
	char		u[16], a[64];
	const char *p[1];
	PGresult   *res;
	int			i, n;
	char		followees[16][16];
	int			total = 0;

	snprintf(u, sizeof u, "%d", rnd(c, 1, n_rt_users / 2));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"uid\": %s}", u);
		return workflow(c, "paper_timeline", a);
	}
	/* the followees, then one read per followee; the merge is client-side */
	p[0] = u;
	res = run(c, "t_followees", "SELECT followee FROM follows WHERE follower = $1 ORDER BY followee", 1, p);
	if (res == NULL)
		return RETRY;
	n = PQntuples(res) < 16 ? PQntuples(res) : 16;
	for (i = 0; i < n; i++)
		snprintf(followees[i], 16, "%s", PQgetvalue(res, i, 0));
	PQclear(res);
	for (i = 0; i < n; i++)
	{
		p[0] = followees[i];
		res = run(c, "t_posts", "SELECT id, author, body FROM posts WHERE author = $1 ORDER BY id DESC LIMIT 10", 1, p);
		if (res == NULL)
			return RETRY;
		total += PQntuples(res);
		PQclear(res);
	}
	if (total == 0)
		die("empty timeline for user %s", u);
	return 0;
}

static int
op_increment(Client *c)
{
	char		k[16], a[32], n[32];
	const char *p[2];

	snprintf(k, sizeof k, "%d", rnd(c, 1, n_counters));
	if (is_apiary)
	{
		snprintf(a, sizeof a, "{\"id\": %s}", k);
		return invoke(c, "paper_increment", a);
	}
	/* read, then write what the client computed */
	p[0] = k;
	if (simple(c, "BEGIN") ||
		one(c, "i_read", "SELECT n FROM counters WHERE id = $1 FOR UPDATE", 1, p, n, sizeof n))
		goto retry;
	snprintf(n, sizeof n, "%lld", atoll(n) + 1);
	p[1] = n;
	if (one(c, "i_write", "UPDATE counters SET n = $2 WHERE id = $1", 2, p, NULL, 0) ||
		simple(c, "COMMIT"))
		goto retry;
	return 0;
retry:
	rollback(c);
	return RETRY;
}

static const struct
{
	const char *name;
	int			(*fn) (Client *);
}			ops[] = {
	{"browse", op_browse}, {"cart", op_cart}, {"checkout", op_checkout},
	{"search", op_search}, {"recommend", op_recommend}, {"reserve", op_reserve},
	{"post", op_post}, {"follow", op_follow}, {"timeline", op_timeline},
	{"increment", op_increment},
};
static int	(*op_fn) (Client *);

static void
record(Client *c, double ms)
{
	if (c->nlat == c->caplat)
	{
		c->caplat = c->caplat ? c->caplat * 2 : 4096;
		c->lat = realloc(c->lat, c->caplat * sizeof(double));
		if (!c->lat)
			die("out of memory");
	}
	c->lat[c->nlat++] = ms;
}

static void *
client_main(void *arg)
{
	Client	   *c = arg;

	pthread_barrier_wait(&barrier);
	for (;;)
	{
		double		begin;

		if (rate > 0)
		{
			double		t;

			pthread_mutex_lock(&arrivals_lock);
			next_arrival += -log(1.0 - rnd01(&arrivals_rng)) / rate;
			begin = next_arrival;
			pthread_mutex_unlock(&arrivals_lock);
			if (begin >= t_end)
				break;
			t = begin - now();
			if (t > 0)
			{
				struct timespec ts = {(time_t) t, (long) ((t - (time_t) t) * 1e9)};

				while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
					;
			}
		}
		else
		{
			begin = now();
			if (begin >= t_end)
				break;
		}
		while (op_fn(c) == RETRY)
			c->retries++;
		record(c, (now() - begin) * 1000);
	}
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return (x > y) - (x < y);
}

static double
percentile(double *v, long n, double q)
{
	long		i;

	if (n == 0)
		return 0;
	i = (long) ceil(q * n) - 1;
	if (i < 0)
		i = 0;
	return v[i];
}

static void
set_param(const char *kv)
{
	const char *eq = strchr(kv, '=');
	int			v;

	if (!eq)
		die("-P wants name=value, not %s", kv);
	v = atoi(eq + 1);
#define P(name) if (strncmp(kv, #name, eq - kv) == 0 && strlen(#name) == (size_t) (eq - kv)) { n_##name = v; return; }
	P(items) P(shop_users) P(hotels) P(nights) P(rt_users) P(counters)
#undef P
		die("unknown parameter %s", kv);
}

int
main(int argc, char **argv)
{
	int			opt, i;
	pthread_t  *threads;
	Client	   *clients;
	double	   *all, elapsed, last_end;
	long		n = 0, retries = 0;

	while ((opt = getopt(argc, argv, "d:s:w:c:T:R:S:P:L:")) != -1)
	{
		switch (opt)
		{
			case 'd': conninfo = optarg; break;
			case 's': sys_name = optarg; break;
			case 'w': op_name = optarg; break;
			case 'c': nclients = atoi(optarg); break;
			case 'T': seconds = atof(optarg); break;
			case 'R': rate = atof(optarg); break;
			case 'S': seed = strtoull(optarg, NULL, 10); break;
			case 'P': set_param(optarg); break;
			case 'L': rtt_us = atol(optarg); break;
			default: die("usage: driver -d conninfo -s apiary|interactive -w op -c clients -T secs [-R rate] [-P name=value]");
		}
	}
	if (!conninfo || !sys_name || !op_name || nclients < 1 || seconds <= 0)
		die("usage: driver -d conninfo -s apiary|interactive -w op -c clients -T secs [-R rate] [-P name=value]");
	if (strcmp(sys_name, "apiary") == 0)
		is_apiary = 1;
	else if (strcmp(sys_name, "interactive") != 0)
		die("unknown system %s", sys_name);
	for (i = 0; i < (int) (sizeof ops / sizeof ops[0]); i++)
		if (strcmp(ops[i].name, op_name) == 0)
			op_fn = ops[i].fn;
	if (!op_fn)
		die("unknown operation %s", op_name);

	clients = calloc(nclients, sizeof(Client));
	threads = calloc(nclients, sizeof(pthread_t));
	for (i = 0; i < nclients; i++)
	{
		clients[i].id = i;
		clients[i].rng = seed * 1000003 + i;
		clients[i].conn = PQconnectdb(conninfo);
		if (PQstatus(clients[i].conn) != CONNECTION_OK)
			die("connecting: %s", PQerrorMessage(clients[i].conn));
	}
	arrivals_rng = seed * 7919;
	pthread_barrier_init(&barrier, NULL, nclients + 1);
	for (i = 0; i < nclients; i++)
		if (pthread_create(&threads[i], NULL, client_main, &clients[i]) != 0)
			die("pthread_create failed");
	t_start = now();
	t_end = t_start + seconds;
	next_arrival = t_start;
	pthread_barrier_wait(&barrier);
	for (i = 0; i < nclients; i++)
		pthread_join(threads[i], NULL);
	last_end = now();
	elapsed = last_end - t_start;

	for (i = 0; i < nclients; i++)
		n += clients[i].nlat;
	all = malloc((n + 1) * sizeof(double));
	n = 0;
	for (i = 0; i < nclients; i++)
	{
		memcpy(all + n, clients[i].lat, clients[i].nlat * sizeof(double));
		n += clients[i].nlat;
		retries += clients[i].retries;
		PQfinish(clients[i].conn);
	}
	if (n == 0)
		die("no operation completed");
	qsort(all, n, sizeof(double), cmp_double);
	printf("ops=%ld retries=%ld elapsed=%.3f tput=%.1f p50=%.3f p90=%.3f p99=%.3f\n",
		   n, retries, elapsed, n / elapsed,
		   percentile(all, n, 0.50), percentile(all, n, 0.90), percentile(all, n, 0.99));
	return 0;
}
