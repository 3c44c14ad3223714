// The page's side of browser proving: runs prove-worker.js, reports each stage, and can be cancelled.
//   const run = prove(input, (stage) => ...);   run.result: Promise<{proof, publicSignals, timings}>
//   run.cancel()                                 stops the worker at once (the promise rejects)
export function prove(input, onStage = () => {}, worker = null) {
  const own = !worker;
  const w = worker || new Worker("/app/static/js/prove-worker.js");
  let cancel;
  const result = new Promise((resolve, reject) => {
    cancel = () => { w.terminate(); reject(new Error("cancelled")); };
    w.onmessage = (event) => {
      const m = event.data;
      if (m.type === "stage") onStage(m.stage, m.ms);
      else if (m.type === "result") { if (own) w.terminate(); resolve(m); }
      else if (m.type === "error") { if (own) w.terminate(); reject(new Error(m.message)); }
    };
    w.onerror = (e) => { reject(new Error(e.message || "the prover stopped")); };
    w.postMessage({ type: "prove", input });
  });
  return { result, cancel: () => cancel() };
}
