/*
 * Live updates of the operators' console (the flow list and the flow page of the Django admin).
 *
 * Connects to Flowsite's native websocket (/ws/flows/ on the list, /ws/flows/{flowId}/ on a
 * flow page) with the admin's session cookie, and applies the server's events
 * ({"event": name, "data": {flowId, seq, ...}}) to the page. Every event name, status and
 * colour comes from the page's configuration (flows.console.console_config), none is spelled here.
 *
 * Sequence numbers: each flow's events are numbered. On (re)connect, and whenever a flow's
 * seq jumps, the script asks for a snapshot of that flow and, until it arrives, keeps that
 * flow's events aside; then it applies the snapshot and the kept events numbered after it.
 * A lost connection is retried with a growing delay, and the banner says so.
 */
(function () {
  "use strict";

  const configElement = document.getElementById("fs-console-config");
  if (!configElement || !("WebSocket" in window)) return;
  const config = JSON.parse(configElement.textContent);
  const E = config.events;
  const C = config.clientEvents;
  const A = config.actions;
  const finalStatuses = new Set(config.finalFlowStatuses);
  const finalEvents = config.finalEvents; // {event name: flow status}
  const banner = document.getElementById("fs-live-banner");
  const onFlowPage = Boolean(config.flowId);

  const seqs = new Map(); // flowId -> the last seq applied
  const pending = new Map(); // flowId -> events kept while its snapshot is on its way
  let socket = null;
  let failures = 0;
  let createdSinceLoad = 0;

  // THE BANNER
  function setBanner(state, text) {
    if (!banner) return;
    banner.dataset.state = state;
    banner.textContent = text;
  }

  function liveText() {
    if (createdSinceLoad) {
      return `Live: updates as they happen. ${createdSinceLoad} new flow(s) since this page was loaded: reload to list them.`;
    }
    return onFlowPage ? "Live: this flow updates as its jobs run." : "Live: statuses and progress update as flows run.";
  }

  // SMALL DOM HELPERS
  function all(selector, root) {
    return Array.from((root || document).querySelectorAll(selector));
  }

  function attr(name, value) {
    return `[${name}="${CSS.escape(value)}"]`;
  }

  function paintBadge(element, status) {
    element.textContent = status;
    element.dataset.status = status;
    element.style.background = config.colours[status] || "#757575";
  }

  function newBadge(status) {
    const element = document.createElement("span");
    element.className = "fs-badge";
    paintBadge(element, status);
    return element;
  }

  function jsonBlock(label, value, css) {
    const compact = JSON.stringify(value);
    const wrapper = document.createElement(compact && compact.length > 120 ? "details" : "div");
    wrapper.className = `fs-kv ${css || ""} fs-live`;
    const head = wrapper.tagName === "DETAILS" ? document.createElement("summary") : wrapper;
    if (head !== wrapper) wrapper.appendChild(head);
    const bold = document.createElement("b");
    bold.textContent = label;
    head.appendChild(bold);
    head.appendChild(document.createTextNode(" "));
    if (wrapper.tagName === "DETAILS") {
      const code = document.createElement("code");
      code.textContent = compact.slice(0, 60) + "…";
      head.appendChild(code);
      const pre = document.createElement("pre");
      pre.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2);
      wrapper.appendChild(pre);
    } else {
      const code = document.createElement("code");
      code.textContent = typeof value === "string" && css === "fs-error" ? value : compact;
      head.appendChild(code);
    }
    return wrapper;
  }

  // An error is the REST API's object ({message, type?, ...}); older payloads carried the text.
  function errorText(error) {
    if (!error || typeof error !== "object") return error || "";
    return error.type ? `${error.type}: ${error.message}` : error.message;
  }

  function formatSeconds(seconds) {
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  // FLOWS: the list's rows and the flow page's fields
  function setFlowStatus(flowId, status) {
    all(attr("data-flow-status", flowId)).forEach((element) => paintBadge(element, status));
  }

  function setFlowProgress(flowId, progress) {
    if (!progress) return;
    const total = progress.total || 0;
    all(attr("data-flow-progress", flowId)).forEach((element) => {
      const done = total ? (100 * (progress.completed || 0)) / total : 0;
      const failed = total ? (100 * (progress.failed || 0)) / total : 0;
      element.querySelector(".fs-bar-done").style.width = `${done.toFixed(1)}%`;
      element.querySelector(".fs-bar-failed").style.width = `${failed.toFixed(1)}%`;
      element.querySelector(".fs-bar-text").textContent = `${progress.completed || 0}/${total}`;
    });
  }

  function setFlowOutcome(flowId, result, error) {
    all(attr("data-flow-result", flowId)).forEach((element) => {
      element.replaceChildren(jsonBlock("", result === undefined ? null : result, "fs-result"));
    });
    all(attr("data-flow-error", flowId)).forEach((element) => {
      element.textContent = errorText(error) || "-";
    });
  }

  function setFlowTimes(flow) {
    if (!flow.startedAt) return;
    const end = flow.completedAt ? Date.parse(flow.completedAt) : Date.now();
    all(attr("data-flow-duration", flow.flowId)).forEach((element) => {
      element.textContent = formatSeconds((end - Date.parse(flow.startedAt)) / 1000);
    });
    if (flow.completedAt) {
      all(attr("data-flow-completed", flow.flowId)).forEach((element) => {
        element.textContent = new Date(flow.completedAt).toLocaleString();
      });
    }
  }

  function markDeleted(flowId) {
    setFlowStatus(flowId, "deleted");
    all(attr("data-flow-status", flowId)).forEach((element) => {
      const row = element.closest("tr");
      if (row) row.style.opacity = "0.4";
    });
  }

  // JOBS (flow page)
  function jobNode(jobId) {
    return document.querySelector(`li.fs-job${attr("data-job-id", jobId)}`);
  }

  function jobLine(node) {
    return node.querySelector(":scope > .fs-line, :scope > details > summary > .fs-line");
  }

  function addJob(job) {
    const node = document.createElement("li");
    node.className = "fs-job fs-new";
    node.dataset.jobId = job.jobId;
    const line = document.createElement("span");
    line.className = "fs-line";
    line.appendChild(newBadge(job.status));
    const name = document.createElement("b");
    name.className = "fs-name";
    const link = document.createElement("a");
    link.href = config.jobUrl.replace("JOB_ID", encodeURIComponent(job.jobId));
    link.textContent = job.name || job.jobId;
    name.appendChild(link);
    const id = document.createElement("code");
    id.className = "fs-id";
    id.title = job.jobId;
    id.textContent = job.jobId.slice(0, 8);
    const meta = document.createElement("span");
    meta.className = "fs-meta";
    meta.innerHTML = 'queue <b></b> · attempts <span class="fs-attempts"></span> · <span class="fs-duration"></span><span class="fs-job-progress"></span>';
    meta.querySelector("b").textContent = job.queueName || "";
    meta.querySelector(".fs-attempts").textContent = `${job.attemptsMade || 0}/?`;
    line.append(" ", name, " ", id, " ", meta);
    node.appendChild(line);
    const body = document.createElement("div");
    body.className = "fs-body";
    node.appendChild(body);
    const parent = job.parentJobId && jobNode(job.parentJobId);
    const list = parent && parent.querySelector(":scope > details > ul");
    const attached = document.getElementById("fs-attached");
    (list || attached).appendChild(node);
    if (!list) attached.closest("[hidden]")?.removeAttribute("hidden");
    return node;
  }

  function updateJob(job) {
    const node = jobNode(job.jobId) || addJob(job);
    const line = jobLine(node);
    if (!line) return;
    if (job.status) paintBadge(line.querySelector(".fs-badge"), job.status);
    const attempts = line.querySelector(".fs-attempts");
    if (attempts && job.attemptsMade !== undefined) {
      attempts.textContent = `${job.attemptsMade}/${attempts.textContent.split("/")[1] || "?"}`;
    }
    if (job.progress !== undefined && job.progress !== 0 && job.progress !== null) {
      line.querySelector(".fs-job-progress").textContent = ` · progress ${JSON.stringify(job.progress)}`;
    }
    if (job.startedAt) {
      const end = job.finishedAt ? Date.parse(job.finishedAt) : Date.now();
      line.querySelector(".fs-duration").textContent = formatSeconds((end - Date.parse(job.startedAt)) / 1000);
    }
    const body = node.querySelector(":scope > .fs-body, :scope > details > .fs-body");
    if (!body) return;
    if (job.result !== undefined || job.error !== undefined) {
      all(":scope > .fs-result, :scope > .fs-error", body).forEach((element) => element.remove());
      if (job.result !== undefined && job.result !== null) body.appendChild(jsonBlock("result", job.result, "fs-result"));
      if (job.error) body.appendChild(jsonBlock("error", errorText(job.error), "fs-error"));
    }
  }

  // EVENTS
  function apply(event, data) {
    const flowId = data.flowId;
    if (event === E.UPDATED || event === E.PROGRESS) {
      setFlowStatus(flowId, data.status);
      setFlowProgress(flowId, data.progress);
    } else if (event in finalEvents) {
      setFlowStatus(flowId, finalEvents[event]);
      if (onFlowPage) {
        setFlowOutcome(flowId, data.result, data.error);
        snapshot(flowId); // the last progress and every job's final state, at once
      }
    } else if (event === E.DELETED) {
      markDeleted(flowId);
      if (onFlowPage) setBanner("disconnected", "This flow was deleted.");
    } else if (event === E.CREATED) {
      if (!onFlowPage) {
        createdSinceLoad += 1;
        setBanner("live", liveText());
      }
    } else if (onFlowPage && event === E.JOB_UPDATED) {
      updateJob({ ...data, status: data.jobStatus });
    } else if (onFlowPage && event === E.JOB_PROGRESS) {
      updateJob({ jobId: data.jobId, progress: data.progress });
    }
  }

  function shown(flowId) {
    if (onFlowPage) return flowId === config.flowId;
    return document.querySelector(attr("data-flow-status", flowId)) !== null;
  }

  function onEvent(event, data) {
    const flowId = data.flowId;
    if (event !== E.CREATED && !shown(flowId)) return;
    if (pending.has(flowId)) {
      pending.get(flowId).push([event, data]);
      return;
    }
    const seq = data.seq;
    const last = seqs.get(flowId);
    if (typeof seq === "number" && last !== undefined) {
      if (seq < last) return; // included in a snapshot already
      if (seq > last + 1) {
        snapshot(flowId); // a gap: events were lost
        pending.get(flowId).push([event, data]);
        return;
      }
    }
    if (typeof seq === "number") seqs.set(flowId, Math.max(seq, last || 0));
    apply(event, data);
  }

  function onSnapshot(flow) {
    const kept = pending.get(flow.flowId) || [];
    pending.delete(flow.flowId);
    seqs.set(flow.flowId, flow.seq);
    setFlowStatus(flow.flowId, flow.status);
    setFlowProgress(flow.flowId, flow.progress);
    setFlowTimes(flow);
    if (onFlowPage && flow.flowId === config.flowId) {
      if (finalStatuses.has(flow.status)) setFlowOutcome(flow.flowId, flow.result, flow.error);
      (flow.jobs || []).forEach(updateJob);
    }
    kept.filter(([, data]) => data.seq > flow.seq).forEach(([event, data]) => onEvent(event, data));
  }

  function snapshot(flowId) {
    pending.set(flowId, pending.get(flowId) || []);
    send({ action: A.SNAPSHOT, flowId: flowId });
  }

  function snapshotAll() {
    if (onFlowPage) {
      snapshot(config.flowId);
      return;
    }
    // The open flows on screen: a finished flow's row changes only if it is retried (and then says so).
    all("[data-flow-status]").forEach((element) => {
      if (!finalStatuses.has(element.dataset.status)) snapshot(element.dataset.flowStatus);
    });
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function onMessage(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    const data = frame.data || {};
    if (frame.event === C.SNAPSHOT) {
      onSnapshot(data);
    } else if (frame.event === C.ERROR) {
      if (data.flowId && pending.has(data.flowId)) {
        pending.delete(data.flowId); // the flow is gone
        markDeleted(data.flowId);
      }
    } else if (data.flowId) {
      onEvent(frame.event, data);
    }
  }

  // THE CONNECTION
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + config.wsPath);
    socket.onopen = () => {
      failures = 0;
      pending.clear();
      setBanner("live", liveText());
      snapshotAll();
    };
    socket.onmessage = onMessage;
    socket.onclose = (close) => {
      socket = null;
      if (close.code === 4401) {
        setBanner("disconnected", "Disconnected: your session has ended. Reload the page to log in again.");
      } else if (close.code === 4404) {
        setBanner("disconnected", "Disconnected: this flow no longer exists.");
      } else {
        reconnectLater();
      }
    };
  }

  function reconnectLater() {
    failures += 1;
    const delay = Math.min(30000, 500 * 2 ** Math.min(failures - 1, 6)) * (0.8 + 0.4 * Math.random());
    setBanner("disconnected", `Disconnected: reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    window.setTimeout(() => {
      setBanner("connecting", "Reconnecting…");
      connect();
    }, delay);
  }

  // THE TREE'S BUTTONS
  all("[data-tree]").forEach((button) => {
    button.addEventListener("click", () => {
      const open = button.dataset.tree === "open";
      all("#fs-job-tree details").forEach((details) => {
        if (details.parentElement.classList.contains("fs-job")) details.open = open;
      });
    });
  });

  connect();
})();
