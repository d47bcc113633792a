// The interactive part of the `emo analyze` report. Reads the analysis.json inlined in #emo-data (its layout:
// docs/analysis.md) and draws: the purity table, the 2-D maps (canvas), the cluster lists with snippets, the
// domain x expert heatmaps, the domain-domain cosine heatmaps and per-layer charts. No libraries, no network.
'use strict';

const A = JSON.parse(document.getElementById('emo-data').textContent);
const state = {
  points: 'tokens',
  colour: 'cluster',
  layer: 0,
  usage: 'chosen',
  selected: A.models.map(() => -1)
};

// ---------- helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class')
      node.className = value;
    else if (key === 'text')
      node.textContent = value;
    else if (key.startsWith('on'))
      node.addEventListener(key.slice(2), value);
    else
      node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const DOMAIN_COLOURS = [
  '#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f',
  '#bab0ac', '#1f77b4', '#8c564b', '#17becf', '#bcbd22', '#7f7f7f', '#d62728'
];
function domainColour(d) {
  return d < DOMAIN_COLOURS.length ? DOMAIN_COLOURS[d] : `hsl(${(d * 137.508) % 360}, 55%, 45%)`;
}
// Clusters: hues spread by the golden angle, alternating lightness so neighbours differ.
function clusterColour(c) { return `hsl(${(c * 137.508) % 360}, 68%, ${c % 2 ? 42 : 55}%)`; }
function fmt(x, digits = 3) { return typeof x === 'number' ? x.toFixed(digits) : String(x); }
// Token text with its whitespace made visible, for chips and tooltips.
function visible(text) {
  return text.replace(/ /g, '\u2423').replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5');
}
// A sequential colour scale (white to dark blue) for values in [0, 1].
function heat(v) {
  const t = Math.max(0, Math.min(1, v));
  const r = Math.round(255 - t * (255 - 22)), g = Math.round(255 - t * (255 - 73)),
        b = Math.round(255 - t * (255 - 140));
  return `rgb(${r},${g},${b})`;
}

const tooltip = document.getElementById('tooltip');
function showTooltip(event, text) {
  tooltip.hidden = false;
  tooltip.textContent = text;
  tooltip.style.left = event.clientX + 14 + 'px';
  tooltip.style.top = event.clientY + 12 + 'px';
}
function hideTooltip() { tooltip.hidden = true; }

function setupToggle(id, key, redraw) {
  const group = document.getElementById(id);
  for (const button of group.querySelectorAll('button')) {
    button.addEventListener('click', () => {
      for (const other of group.querySelectorAll('button')) other.classList.toggle('on', other === button);
      state[key] = button.dataset.value;
      redraw();
    });
  }
}

// ---------- summary ----------

function drawSummary() {
  const sample = A.sample;
  document.getElementById('dataset-line').textContent =
      `${A.dataset}: ${sample.ids.length} tokens of ${sample.documents.length} documents in ${
          A.domains.length} domains; ` +
      `${A.options.clusters} clusters, PCA to ${Math.round(A.options.pca_variance * 100)}% of the variance.`;
  document.getElementById('coverage-fraction').textContent =
      Math.round(A.options.coverage_fraction * 100) + '%';
  const rows = [
    ['NMI (cluster, domain)', 'nmi_domain'], ['NMI (cluster, token)', 'nmi_token'], ['purity', 'purity'],
    ['document NMI', 'document_nmi'], ['mean domain cosine (chosen experts)', 'mean_cosine'],
    ['mean domain cosine, last layer', 'mean_cosine_last_layer'],
    ['mean domain cosine (routing mass)', 'mean_cosine_mass'],
    ['mean coverage (routing mass)', 'mean_coverage'], ['mean coverage (chosen)', 'mean_coverage_chosen'],
    ['routed experts per layer', 'experts']
  ];
  const table = document.getElementById('summary-table');
  table.append(el('tr', {}, el('th', {text: 'figure'}), ...A.models.map((m) => el('th', {text: m.name}))));
  for (const [label, key] of rows)
    table.append(
        el('tr', {}, el('td', {text: label}), ...A.models.map((m) => el('td', {text: fmt(m.purity[key])}))));
  table.append(el(
      'tr', {}, el('td', {text: 'PCA components (variance)'}),
      ...A.models.map(
          (m) =>
              el('td', {text: `${m.pca.components} of ${m.features} (${fmt(m.pca.explained * 100, 1)}%)`}))));
  if (A.comparison)
    table.append(
        el('tr', {}, el('td', {text: 'agreement of the two clusterings (NMI)'}),
           el('td', {text: fmt(A.comparison.cluster_agreement_nmi), colspan: String(A.models.length)})));
}

// ---------- maps ----------

const maps = [];  // per model: { canvas, legend, screen: [[x, y]], labels }

function mapPoints(m) {
  const docs = state.points === 'documents';
  const src = docs ? m.document_map : m.token_map;
  const domain = docs ? A.sample.documents.map((d) => d.domain) : A.sample.domain;
  return {x: src.x, y: src.y, cluster: src.cluster, domain, docs};
}

function pointLabel(m, p, i) {
  const domain = A.domains[p.domain[i]];
  if (p.docs) {
    const d = A.sample.documents[i];
    return `document ${d.index} (${domain}), ${d.length} tokens\nmost of its tokens in cluster ${
        p.cluster[i]}`;
  }
  const text = A.sample.vocab[A.sample.ids[i]] || '';
  return `"${visible(text)}" (${domain})\ncluster ${p.cluster[i]}`;
}

function drawMap(index) {
  const m = A.models[index], view = maps[index], p = mapPoints(m);
  const canvas = view.canvas, ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, pad = 14;
  ctx.clearRect(0, 0, W, H);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < p.x.length; i++) {
    x0 = Math.min(x0, p.x[i]);
    x1 = Math.max(x1, p.x[i]);
    y0 = Math.min(y0, p.y[i]);
    y1 = Math.max(y1, p.y[i]);
  }
  const sx = (W - 2 * pad) / (x1 - x0 || 1), sy = (H - 2 * pad) / (y1 - y0 || 1);
  view.screen = p.x.map((x, i) => [pad + (x - x0) * sx, H - pad - (p.y[i] - y0) * sy]);
  view.points = p;
  const selected = state.selected[index];
  const radius = p.docs ? 3.2 : 1.6;
  // Unselected clusters first and faded, so the selected one stays on top.
  for (const pass of [0, 1]) {
    for (let i = 0; i < p.x.length; i++) {
      const inSelection = selected < 0 || p.cluster[i] === selected;
      if ((pass === 1) !== (inSelection && selected >= 0)) continue;
      ctx.globalAlpha = inSelection ? (p.docs ? 0.85 : 0.6) : 0.08;
      ctx.fillStyle = state.colour === 'cluster' ? clusterColour(p.cluster[i]) : domainColour(p.domain[i]);
      const [x, y] = view.screen[i];
      ctx.fillRect(x - radius, y - radius, 2 * radius, 2 * radius);
    }
  }
  ctx.globalAlpha = 1;
  drawLegend(index);
}

function drawLegend(index) {
  const legend = maps[index].legend;
  legend.replaceChildren();
  if (state.colour === 'domain') {
    A.domains.forEach(
        (name, d) => legend.append(
            el('span', {}, el('i', {class: 'swatch', style: `background:${domainColour(d)}`}), name)));
    return;
  }
  A.models[index].clusters.forEach((c) => {
    const name = A.domains[c.majority_domain];
    legend.append(
        el('span', {
          title: `cluster ${c.id}: ${c.size} tokens, ${Math.round(c.majority_share * 100)}% ${name}`,
          onclick: () => selectCluster(index, c.id, true)
        },
           el('i', {class: 'swatch', style: `background:${clusterColour(c.id)}`}), String(c.id)));
  });
}

function nearestPoint(view, x, y) {
  let best = -1, bestDistance = 49;  // within 7 pixels
  for (let i = 0; i < view.screen.length; i++) {
    const dx = view.screen[i][0] - x, dy = view.screen[i][1] - y, d = dx * dx + dy * dy;
    if (d < bestDistance) {
      best = i;
      bestDistance = d;
    }
  }
  return best;
}

function canvasPosition(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  return [
    (event.clientX - rect.left) * (canvas.width / rect.width),
    (event.clientY - rect.top) * (canvas.height / rect.height)
  ];
}

function buildMaps() {
  const container = document.getElementById('map-models');
  A.models.forEach((m, index) => {
    const canvas = el('canvas', {width: '640', height: '460', 'data-testid': `map-${index}`});
    const legend = el('div', {class: 'legend'});
    container.append(el('div', {class: 'model'}, el('h3', {text: m.name}), canvas, legend));
    maps.push({canvas, legend, screen: [], points: null});
    canvas.addEventListener('mousemove', (event) => {
      const [x, y] = canvasPosition(canvas, event);
      const i = nearestPoint(maps[index], x, y);
      if (i < 0)
        hideTooltip();
      else
        showTooltip(event, pointLabel(m, maps[index].points, i));
    });
    canvas.addEventListener('mouseleave', hideTooltip);
    canvas.addEventListener('click', (event) => {
      const [x, y] = canvasPosition(canvas, event);
      const i = nearestPoint(maps[index], x, y);
      if (i >= 0) selectCluster(index, maps[index].points.cluster[i], true);
    });
  });
}

function drawMaps() { A.models.forEach((m, index) => drawMap(index)); }

// ---------- clusters ----------

function snippetNode(example) {
  return el(
      'div', {class: 'snippet', 'data-testid': 'snippet'}, el('span', {
        class: 'where',
        text: `${A.domains[example.domain]}, document ${A.sample.documents[example.document].index}, token ${
            example.position}`
      }),
      example.left, el('mark', {text: example.text}), example.right);
}

function domainBar(c) {
  const bar = el('div', {class: 'domain-bar'});
  c.domain_counts.forEach((count, d) => {
    if (count > 0)
      bar.append(el('div', {
        style: `width:${(100 * count) / c.size}%;background:${domainColour(d)}`,
        title: `${A.domains[d]}: ${count} tokens (${Math.round((100 * count) / c.size)}%)`
      }));
  });
  return bar;
}

function clusterBody(c) {
  const domains = c.domain_counts.map((count, d) => [count, d])
                      .filter(([count]) => count > 0)
                      .sort((a, b) => b[0] - a[0]);
  return el(
      'div', {class: 'cluster-body'}, domainBar(c), el('div', {
        class: 'note',
        text: domains.slice(0, 5)
                  .map(([count, d]) => `${A.domains[d]} ${Math.round((100 * count) / c.size)}%`)
                  .join(' · ')
      }),
      ...c.examples.map(snippetNode));
}

function buildClusterLists() {
  const container = document.getElementById('cluster-models');
  A.models.forEach((m, index) => {
    const list = el('ul', {class: 'cluster-list', 'data-testid': `clusters-${index}`});
    const order = m.clusters.slice().sort((a, b) => b.size - a.size);
    for (const c of order) {
      const head =
          el('div', {class: 'cluster-head'},
             el('i', {class: 'swatch', style: `background:${clusterColour(c.id)}`}),
             el('span', {class: 'cluster-id', text: `#${c.id}`}),
             el('span', {class: 'cluster-size', text: `${c.size} tok`}),
             el('span', {text: `${A.domains[c.majority_domain]} ${Math.round(c.majority_share * 100)}%`}),
             el('span', {},
                ...c.top_tokens.slice(0, 8).map(
                    (t) => el('span', {class: 'chip', title: `${t.count} times`, text: visible(t.text)}))));
      const item = el('li', {class: 'cluster', 'data-cluster': String(c.id), 'data-testid': 'cluster'}, head);
      head.addEventListener(
          'click', () => selectCluster(index, state.selected[index] === c.id ? -1 : c.id, false));
      list.append(item);
    }
    container.append(el('div', {class: 'model'}, el('h3', {text: m.name}), list));
  });
}

// Opens cluster c of model `index` in its list (and closes the others), highlights it on the map.
function selectCluster(index, c, scroll) {
  state.selected[index] = c;
  const list = document.querySelector(`[data-testid="clusters-${index}"]`);
  for (const item of list.children) {
    const open = Number(item.dataset.cluster) === c;
    const body = item.querySelector('.cluster-body');
    item.classList.toggle('open', open);
    if (open && !body) item.append(clusterBody(A.models[index].clusters[c]));
    if (!open && body) body.remove();
    if (open && scroll) item.scrollIntoView({block: 'nearest'});
  }
  drawMap(index);
}

// ---------- usage heatmaps ----------

// A heatmap on a canvas: rows x cols values in [0, max]; labels on the left; hover shows the value.
function heatmapCanvas(values, rowLabels, colLabel, max, title, showNumbers) {
  const rows = values.length, cols = values[0].length, left = 110, top = 18;
  // Cells as wide as fit in about 560 pixels, rows at least 14 pixels high so the labels stay readable.
  const cell = Math.max(4, Math.min(28, Math.floor(560 / cols))), row = Math.max(cell, 14);
  const gap = cell > 8 ? 1 : 0;
  const canvas = el('canvas', {width: String(left + cols * cell + 4), height: String(top + rows * row + 4)});
  const ctx = canvas.getContext('2d');
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#1d2330';
  ctx.fillText(title, 2, 12);
  for (let r = 0; r < rows; r++) {
    ctx.fillStyle = '#1d2330';
    ctx.textAlign = 'right';
    ctx.fillText(rowLabels[r].slice(0, 16), left - 4, top + r * row + row / 2 + 4);
    for (let c = 0; c < cols; c++) {
      const v = values[r][c] / (max || 1);
      ctx.fillStyle = heat(v);
      ctx.fillRect(left + c * cell, top + r * row, cell - gap, row - 1);
      if (showNumbers && cell >= 24) {
        ctx.fillStyle = v > 0.55 ? '#fff' : '#1d2330';
        ctx.textAlign = 'center';
        ctx.fillText(
            values[r][c].toFixed(2).replace(/^0/, ''), left + c * cell + cell / 2,
            top + r * row + row / 2 + 4);
      }
    }
  }
  canvas.addEventListener('mousemove', (event) => {
    const [x, y] = canvasPosition(canvas, event);
    const c = Math.floor((x - left) / cell), r = Math.floor((y - top) / row);
    if (r < 0 || r >= rows || c < 0 || c >= cols) return hideTooltip();
    showTooltip(event, `${rowLabels[r]}, ${colLabel(c)}: ${values[r][c].toFixed(4)}`);
  });
  canvas.addEventListener('mouseleave', hideTooltip);
  return canvas;
}

function coverageTable(m, layer) {
  const usage = m.usage[layer];
  const table =
      el('table', {class: 'coverage'},
         el('tr', {}, el('th', {text: 'domain'}), el('th', {text: 'coverage (mass)'}),
            el('th', {text: 'coverage (chosen)'})));
  A.domains.forEach((name, d) => {
    if (A.domain_tokens[d] > 0)
      table.append(
          el('tr', {}, el('td', {text: name}), el('td', {text: String(usage.coverage[d])}),
             el('td', {text: String(usage.coverage_chosen[d])})));
  });
  return table;
}

function drawUsage() {
  const container = document.getElementById('usage-models');
  container.replaceChildren();
  document.getElementById('layer-label').textContent = `${state.layer} of ${A.models[0].layers - 1}`;
  const present = A.domains.map((name, d) => d).filter((d) => A.domain_tokens[d] > 0);
  const names = present.map((d) => A.domains[d]);
  A.models.forEach((m) => {
    const layer = Math.min(state.layer, m.layers - 1), usage = m.usage[layer];
    const matrix = present.map((d) => usage[state.usage][d]);
    const max = Math.max(...matrix.flat());
    const cosineKey = state.usage === 'mass' ? 'cosine_mass' : 'cosine';
    const cosine = present.map((a) => present.map((b) => usage[cosineKey][a][b]));
    container.append(
        el('div', {class: 'model'}, el('h3', {
             text: `${m.name}: layer ${layer}, mean domain cosine ${fmt(usage.mean_cosine)} (chosen), ${
                 fmt(usage.mean_cosine_mass)} (mass), mean coverage ${fmt(usage.mean_coverage, 1)} of ${
                 m.experts[layer]}`
           }),
           el('div', {class: 'heatmaps'},
              heatmapCanvas(
                  matrix, names, (c) => `expert ${c}`, max,
                  `domain x expert (${state.usage}), max ${fmt(max)}`, false),
              heatmapCanvas(cosine, names, (c) => names[c], 1, `domain-domain cosine (${state.usage})`, true),
              coverageTable(m, layer))));
  });
}

// ---------- per-layer charts (SVG) ----------

function lineChart(title, series, yMax) {
  const W = 420, H = 220, left = 40, bottom = 28, top = 22, right = 10;
  const layers = Math.max(...series.map((s) => s.values.length));
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', W);
  svg.setAttribute('height', H);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const x = (l) => left + (layers > 1 ? (l * (W - left - right)) / (layers - 1) : (W - left - right) / 2);
  const y = (v) => H - bottom - (v / (yMax || 1)) * (H - bottom - top);
  add('text', {x: left, y: 14, 'font-size': 12}, title);
  add('line', {x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: '#999'});
  add('line', {x1: left, y1: top, x2: left, y2: H - bottom, stroke: '#999'});
  for (const v of [0, yMax / 2, yMax])
    add('text', {x: left - 4, y: y(v) + 4, 'font-size': 10, 'text-anchor': 'end'}, fmt(v, 2));
  for (let l = 0; l < layers; l++)
    add('text', {x: x(l), y: H - bottom + 14, 'font-size': 10, 'text-anchor': 'middle'}, String(l));
  add('text', {x: (W + left) / 2, y: H - 2, 'font-size': 10, 'text-anchor': 'middle'}, 'layer');
  series.forEach((s, i) => {
    const colour = i === 0 ? '#2f6fde' : '#e15759';
    add('polyline', {
      points: s.values.map((v, l) => `${x(l)},${y(v)}`).join(' '),
      fill: 'none',
      stroke: colour,
      'stroke-width': 2
    });
    add('text', {x: W - right, y: top + 12 * i, 'font-size': 11, 'text-anchor': 'end', fill: colour}, s.name);
  });
  return svg;
}

function drawLayerCharts() {
  const container = document.getElementById('layer-charts');
  const cosine = A.models.map((m) => ({name: m.name, values: m.usage.map((u) => u.mean_cosine)}));
  const coverage = A.models.map((m) => ({name: m.name, values: m.usage.map((u) => u.mean_coverage)}));
  const maxExperts = Math.max(...A.models.map((m) => Math.max(...m.experts)));
  container.append(
      lineChart('mean domain-domain cosine of expert usage (chosen experts)', cosine, 1),
      lineChart(
          `mean coverage: experts holding ${
              Math.round(A.options.coverage_fraction * 100)}% of a domain's mass`,
          coverage, maxExperts));
}

// ---------- wiring ----------

function main() {
  drawSummary();
  buildMaps();
  drawMaps();
  buildClusterLists();
  const slider = document.getElementById('layer-slider');
  slider.max = String(Math.max(...A.models.map((m) => m.layers)) - 1);
  slider.value = slider.max;
  state.layer = Number(slider.max);
  slider.addEventListener('input', () => {
    state.layer = Number(slider.value);
    drawUsage();
  });
  drawUsage();
  drawLayerCharts();
  setupToggle('points-toggle', 'points', drawMaps);
  setupToggle('colour-toggle', 'colour', drawMaps);
  setupToggle('usage-toggle', 'usage', drawUsage);
  document.getElementById('clear-selection')
      .addEventListener('click', () => A.models.forEach((m, i) => selectCluster(i, -1, false)));
  document.body.dataset.ready = 'true';
}

main();
