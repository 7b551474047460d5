wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"model":"echo","messages":[{"role":"user","content":"hello there"}],"stream":true}]]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p99.9":%.1f,"mean":%.1f,"max":%.1f}}\n',
    "BENCH-JSON ", summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
