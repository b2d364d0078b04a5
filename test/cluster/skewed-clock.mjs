// Preloaded into a test node (NODE_OPTIONS=--import=…): its Date.now() runs HERALD_TEST_CLOCK_SKEW_MS
// ahead of (or, negative, behind) the machine's clock, as on a host whose clock drifted.
const skew = Number(process.env.HERALD_TEST_CLOCK_SKEW_MS ?? 0);
const realNow = Date.now;
Date.now = () => realNow() + skew;
