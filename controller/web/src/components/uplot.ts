// uPlot and its stylesheet, split into their own chunk (imported only by Chart).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export default uPlot;
