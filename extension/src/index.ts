/**
 * infer-lab's JupyterLab extension: three plugins over one TelemetryStore.
 *
 *   navigator  left sidebar: labs, objectives, time, progress, continue
 *   monitor    command "infer-lab:open-monitor" (palette + launcher): live telemetry
 *   status     status bar: device and memory in use
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { IHardware, ILabsReply, requestAPI } from './api';
import { TelemetryHub } from './comms';
import { InferenceMonitor } from './monitor';
import { LabNavigator } from './navigator';
import { HardwareStatus } from './statusbar';
import { TelemetryStore } from './telemetry';

const OPEN_MONITOR = 'infer-lab:open-monitor';
const OPEN_NAVIGATOR = 'infer-lab:open-navigator';

const labIcon = new LabIcon({
  name: 'infer-lab:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" ' +
    'fill="#616161"><path d="M3 19h18v2H3zM5 10h3v8H5zm5.5-5h3v13h-3zM16 13h3v5h-3z"/>' +
    '</g></svg>'
});

const store = new TelemetryStore();
const hub = new TelemetryHub(store);

const navigatorPlugin: JupyterFrontEndPlugin<void> = {
  id: 'infer-lab-ext:navigator',
  description: 'The lab navigator: labs, objectives, time and progress.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const settings = app.serviceManager.serverSettings;
    const nav = new LabNavigator({
      fetchLabs: () => requestAPI<ILabsReply>('labs', settings),
      open: path => void app.commands.execute('docmanager:open', { path })
    });
    nav.title.icon = labIcon;
    app.shell.add(nav, 'left', { rank: 150 });
    restorer?.add(nav, nav.id);
    app.commands.addCommand(OPEN_NAVIGATOR, {
      label: 'infer-lab: Show the Lab Navigator',
      execute: () => {
        app.shell.activateById(nav.id);
        void nav.refresh();
      }
    });
    palette?.addItem({ command: OPEN_NAVIGATOR, category: 'infer-lab' });
  }
};

const monitorPlugin: JupyterFrontEndPlugin<void> = {
  id: 'infer-lab-ext:monitor',
  description: 'The inference monitor: live telemetry from infer_lab in the kernels.',
  autoStart: true,
  optional: [INotebookTracker, ICommandPalette, ILauncher, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null
  ) => {
    // Every notebook's kernel gets the comm target, whether or not the monitor is open:
    // the kernel then knows a listener exists, and sends only once one subscribes.
    notebooks?.widgetAdded.connect((_, panel) => {
      const ctx = panel.sessionContext;
      ctx.kernelChanged.connect((_s, change) => hub.attach(change.newValue));
      void ctx.ready.then(() => hub.attach(ctx.session?.kernel));
    });
    notebooks?.forEach(panel => hub.attach(panel.sessionContext.session?.kernel));

    const tracker = new WidgetTracker<MainAreaWidget<InferenceMonitor>>({
      namespace: 'infer-lab-monitor'
    });
    app.commands.addCommand(OPEN_MONITOR, {
      label: 'infer-lab: Inference Monitor',
      caption: 'Live tokens/s, TTFT/TPOT, requests, KV blocks and memory of infer_lab',
      icon: labIcon,
      execute: (args: any) => {
        let widget = tracker.currentWidget;
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new InferenceMonitor(store) });
          widget.id = 'infer-lab-monitor';
          widget.title.label = 'Inference Monitor';
          widget.title.icon = labIcon;
          widget.title.closable = true;
          widget.disposed.connect(() => hub.setWatching(false));
          void tracker.add(widget);
        }
        if (!widget.isAttached) {
          app.shell.add(widget, 'main', { mode: args?.mode ?? 'split-right' });
        }
        hub.setWatching(true);
        app.shell.activateById(widget.id);
      }
    });
    palette?.addItem({ command: OPEN_MONITOR, category: 'infer-lab' });
    launcher?.add({ command: OPEN_MONITOR, category: 'Other', rank: 1 });
    if (restorer) {
      void restorer.restore(tracker, { command: OPEN_MONITOR, name: () => 'monitor' });
    }
  }
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: 'infer-lab-ext:status',
  description: 'Status bar item: device and memory in use.',
  autoStart: true,
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, statusBar: IStatusBar | null) => {
    if (!statusBar) {
      return;
    }
    const settings = app.serviceManager.serverSettings;
    const item = new HardwareStatus(() => requestAPI<IHardware>('hardware', settings));
    statusBar.registerStatusItem('infer-lab-ext:status', {
      item,
      align: 'left',
      rank: 5
    });
  }
};

export default [navigatorPlugin, monitorPlugin, statusPlugin];
